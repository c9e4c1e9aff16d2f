package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
)

// toolEnv is the environment of the tools the tests run: the system's
// binaries (libnbd's Python tools need the system Python).
func toolEnv(extra ...string) []string {
	return append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + os.TempDir()}, extra...)
}

// buildNvblk builds the nvblk binary into dir.
func buildNvblk(t *testing.T, dir string) string {
	t.Helper()
	goTool := testutil.NeedTool(t, "go")
	bin := filepath.Join(dir, "nvblk")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	build := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/nvblk")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a process started by a test, killed at cleanup if still running.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *testutil.LockedBuffer
	done           chan struct{} // closed when Wait returned
	err            error         // Wait's result, once done is closed
}

func startProc(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), stdout: &testutil.LockedBuffer{}, stderr: &testutil.LockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit status.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		var ee *exec.ExitError
		if p.err != nil && !errors.As(p.err, &ee) {
			t.Fatal(p.err)
		}
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		t.Fatalf("%s still running after %v\nstdout:\n%s\nstderr:\n%s", p.cmd.Path, timeout, p.stdout, p.stderr)
		return -1
	}
}

// waitOutput waits until re matches the process's stdout and returns the
// first submatch.
func (p *proc) waitOutput(t *testing.T, re *regexp.Regexp) string {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		if m := re.FindStringSubmatch(p.stdout.String()); m != nil {
			return m[1]
		}
		select {
		case <-p.done:
			t.Fatalf("exited early (%v)\nstdout:\n%s\nstderr:\n%s", p.err, p.stdout, p.stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %v within 20 s\nstdout:\n%s\nstderr:\n%s", re, p.stdout, p.stderr)
		}
	}
}

func runTool(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestServeService runs the nvblk binary as a service: under
// systemd-socket-activate, in captive mode (--run) with nbdcopy, with a
// pid file, with --exit-when-idle, and with --metrics scraped during an
// fio run.
func TestServeService(t *testing.T) {
	dir := t.TempDir()
	bin := buildNvblk(t, dir)
	img := filepath.Join(dir, "svc.img")
	if out, err := runTool(t, toolEnv(), bin, "create", "--size", "64M", img); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}

	t.Run("SocketActivation", func(t *testing.T) {
		activate := testutil.NeedTool(t, "systemd-socket-activate")
		nbdinfo := testutil.NeedTool(t, "nbdinfo")
		sock := filepath.Join(t.TempDir(), "act.sock")
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tcpAddr := ln.Addr().String() // free a moment ago; systemd-socket-activate takes it
		ln.Close()
		for _, c := range []struct{ listen, uri string }{
			{sock, "nbd+unix:///?socket=" + sock},
			{tcpAddr, "nbd://" + tcpAddr},
		} {
			// systemd-socket-activate listens, and on the first
			// connection execs nvblk with the socket as fd 3
			// (LISTEN_PID, LISTEN_FDS=1, LISTEN_FDNAMES=nbd).
			p := startProc(t, toolEnv(), activate, "-l", c.listen, "--fdname=nbd", bin, "serve", "-v", "--exit-when-idle", img)
			var out string
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				// Before systemd-socket-activate listens, nbdinfo fails.
				if out, err = runTool(t, toolEnv(), nbdinfo, "--json", c.uri); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("nbdinfo %s: %v\n%s\nserver:\n%s", c.uri, err, out, p.stderr)
				}
			}
			var info struct {
				Exports []struct {
					Size     uint64 `json:"export-size"`
					MinBlock uint32 `json:"block_size_minimum"`
					ReadOnly bool   `json:"is_read_only"`
				} `json:"exports"`
			}
			if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
				t.Fatalf("nbdinfo --json: %v\n%s", err, out)
			}
			if e := info.Exports[0]; e.Size == 0 || e.Size%4096 != 0 || e.MinBlock != 4096 || e.ReadOnly {
				t.Errorf("%s: export %+v", c.uri, e)
			}
			// --exit-when-idle: nbdinfo was the only client.
			if code := p.wait(t, 30*time.Second); code != 0 {
				t.Fatalf("%s: exit %d\n%s", c.uri, code, p.stderr)
			}
			if !strings.Contains(p.stdout.String(), "listening on "+c.uri) {
				t.Errorf("stdout does not name the activated socket %s:\n%s", c.uri, p.stdout)
			}
			if !strings.Contains(p.stderr.String(), "connection opened") || !strings.Contains(p.stderr.String(), "last client disconnected") {
				t.Errorf("stderr:\n%s", p.stderr)
			}
		}
	})

	// A socket unit with Accept=yes passes a connected socket: refused
	// with a clear error, not served as a listener that fails to accept.
	t.Run("SocketActivationAccept", func(t *testing.T) {
		activate := testutil.NeedTool(t, "systemd-socket-activate")
		nbdinfo := testutil.NeedTool(t, "nbdinfo")
		sock := filepath.Join(t.TempDir(), "acc.sock")
		p := startProc(t, toolEnv(), activate, "--accept", "-l", sock, bin, "serve", img)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if out, err := runTool(t, toolEnv(), nbdinfo, "nbd+unix:///?socket="+sock); err == nil {
				t.Fatalf("served a connected socket:\n%s", out)
			}
			if strings.Contains(p.stderr.String(), "not a listening socket (use Accept=no") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no refusal:\n%s", p.stderr)
			}
		}
	})

	t.Run("Run", func(t *testing.T) {
		nbdcopy := testutil.NeedTool(t, "nbdcopy")
		tdir := t.TempDir()
		src, dst := filepath.Join(tdir, "src.raw"), filepath.Join(tdir, "dst.raw")
		data := make([]byte, 5<<20)
		rng := rand.New(rand.NewPCG(19, 1))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		// In: the 5 MiB file onto the start of the export.
		env := toolEnv("SRC="+src, "DST="+dst, "NBDCOPY="+nbdcopy)
		out, err := runTool(t, env, bin, "serve", "--run", `"$NBDCOPY" "$SRC" "$uri" && echo "sock=$unixsocket nbd=$nbd"`, img)
		if err != nil {
			t.Fatalf("serve --run nbdcopy in: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`sock=(\S+) nbd=(\S+)`).FindStringSubmatch(out)
		if m == nil || !strings.HasPrefix(m[2], "nbd+unix:///?socket=") || !strings.HasSuffix(m[2], m[1]) {
			t.Fatalf("captive environment: %s", out)
		}
		if _, err := os.Stat(filepath.Dir(m[1])); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the private socket directory %s is left behind (%v)", filepath.Dir(m[1]), err)
		}
		if strings.Contains(out, "listening on") {
			t.Errorf("captive mode printed the connect help:\n%s", out)
		}
		// Out: the whole export into a new file.
		if out, err := runTool(t, env, bin, "serve", "--read-only", "--run", `"$NBDCOPY" "$uri" "$DST"`, img); err != nil {
			t.Fatalf("serve --run nbdcopy out: %v\n%s", err, out)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < len(data) || !bytes.Equal(got[:len(data)], data) {
			t.Fatalf("copied out %d bytes; the first %d differ from what was copied in", len(got), len(data))
		}
		// The command's exit status is serve's.
		for _, c := range []struct {
			script string
			code   int
		}{{"exit 0", 0}, {"exit 7", 7}, {`test -S "$unixsocket" && test "$nbd" = "$uri" && exit 42`, 42}, {"kill -KILL $$", 128 + 9}} {
			p := startProc(t, toolEnv(), bin, "serve", "--run", c.script, img)
			if code := p.wait(t, 30*time.Second); code != c.code {
				t.Errorf("--run %q: exit %d, want %d\n%s", c.script, code, c.code, p.stderr)
			}
		}
	})

	t.Run("PidFile", func(t *testing.T) {
		tdir := t.TempDir()
		sock, pidFile := filepath.Join(tdir, "p.sock"), filepath.Join(tdir, "serve.pid")
		p := startProc(t, toolEnv(), bin, "serve", "--socket", sock, "--pid-file", pidFile, img)
		var pid []byte
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
			var err error
			if pid, err = os.ReadFile(pidFile); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no pid file\n%s", p.stderr)
			}
		}
		// The moment the file exists, a client connects at the first try.
		c := dialURI(t, "nbd+unix:///?socket="+sock)
		if c.size == 0 {
			t.Error("export of size 0")
		}
		c.Close()
		if want := strconv.Itoa(p.cmd.Process.Pid) + "\n"; string(pid) != want {
			t.Errorf("pid file %q, want %q", pid, want)
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		if code := p.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit %d\n%s", code, p.stderr)
		}
		if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pid file left at exit: %v", err)
		}
	})

	t.Run("ExitWhenIdle", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "i.sock")
		p := startProc(t, toolEnv(), bin, "serve", "--socket", sock, "--exit-when-idle", img)
		uri := p.waitOutput(t, listenRE)
		c1 := dialURI(t, uri)
		c2 := dialURI(t, uri)
		p1 := bytes.Repeat([]byte{0xe1}, 4096)
		if errno, _ := c1.cmd(t, 1, 0, 4096, p1); errno != 0 {
			t.Fatalf("write: errno %d", errno)
		}
		c1.Close()
		select {
		case <-p.done:
			t.Fatalf("exited (%v) with a client still connected\n%s", p.err, p.stderr)
		case <-time.After(200 * time.Millisecond):
		}
		if errno, data := c2.cmd(t, 0, 0, 4096, nil); errno != 0 || !bytes.Equal(data, p1) {
			t.Fatalf("read on the second client: errno %d", errno)
		}
		c2.Close()
		if code := p.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit %d\n%s", code, p.stderr)
		}
		if !strings.Contains(p.stderr.String(), "every acknowledged write is durable") {
			t.Errorf("stderr:\n%s", p.stderr)
		}
	})

	t.Run("MetricsFio", func(t *testing.T) {
		fio := testutil.NeedTool(t, "fio")
		sock := filepath.Join(t.TempDir(), "f.sock")
		// A bare port: loopback.
		p := startProc(t, toolEnv(), bin, "serve", "--socket", sock, "--metrics", "0", img)
		uri := p.waitOutput(t, listenRE)
		murl := p.waitOutput(t, regexp.MustCompile(`metrics at (\S+)`))
		if !strings.HasPrefix(murl, "http://127.0.0.1:") {
			t.Fatalf("metrics at %s, want loopback", murl)
		}
		before := scrape(t, murl)
		cmd := exec.Command(fio, "--name=svc", "--ioengine=nbd", "--uri="+uri, "--rw=randrw", "--rwmixread=60",
			"--bs=4k", "--size=32M", "--iodepth=8", "--time_based", "--runtime=3", "--output-format=json")
		cmd.Env = toolEnv()
		var fout, ferr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &fout, &ferr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		fdone := make(chan error, 1)
		go func() { fdone <- cmd.Wait() }()
		// Scrape while fio runs: the counters only grow.
		var during []map[string]float64
	scraping:
		for range 100 {
			select {
			case err := <-fdone:
				fdone <- err
				break scraping
			case <-time.After(300 * time.Millisecond):
				during = append(during, scrape(t, murl))
			}
		}
		var ferrRun error
		select {
		case ferrRun = <-fdone:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			t.Fatal("fio still running after 60 s")
		}
		if ferrRun != nil {
			t.Fatalf("fio: %v\n%s\n%s", ferrRun, ferr.String(), fout.String())
		}
		after := scrape(t, murl)
		if len(during) < 2 {
			t.Fatalf("%d scrapes during the fio run", len(during))
		}
		reads := `nvblk_nbd_requests_total{command="read",export=""}`
		for i := 1; i < len(during); i++ {
			if during[i][reads] < during[i-1][reads] {
				t.Errorf("reads went down between scrapes: %v then %v", during[i-1][reads], during[i][reads])
			}
		}
		if during[len(during)-1][reads] == before[reads] {
			t.Errorf("no reads counted during the run")
		}
		var res struct {
			Jobs []struct {
				Read, Write struct {
					TotalIOs uint64 `json:"total_ios"`
					IOBytes  uint64 `json:"io_bytes"`
				}
			} `json:"jobs"`
		}
		// The nbd engine prints a line of its own before the JSON.
		js := fout.Bytes()
		if i := bytes.IndexByte(js, '{'); i > 0 {
			js = js[i:]
		}
		if err := json.Unmarshal(js, &res); err != nil || len(res.Jobs) != 1 {
			t.Fatalf("fio json: %v\n%s", err, fout.String())
		}
		j := res.Jobs[0]
		delta := func(name string) uint64 { return uint64(after[name] - before[name]) }
		checks := []struct {
			metric string
			want   uint64
		}{
			{reads, j.Read.TotalIOs},
			{`nvblk_nbd_requests_total{command="write",export=""}`, j.Write.TotalIOs},
			{`nvblk_nbd_request_duration_seconds_count{command="read",export=""}`, j.Read.TotalIOs},
			{`nvblk_nbd_request_duration_seconds_count{command="write",export=""}`, j.Write.TotalIOs},
			{`nvblk_nbd_read_bytes_total{export=""}`, j.Read.IOBytes},
			{`nvblk_nbd_written_bytes_total{export=""}`, j.Write.IOBytes},
		}
		for _, c := range checks {
			if got := delta(c.metric); got != c.want {
				t.Errorf("%s: +%d, fio reports %d", c.metric, got, c.want)
			}
		}
		if j.Read.TotalIOs == 0 || j.Write.TotalIOs == 0 {
			t.Errorf("fio did no I/O: %+v", j)
		}
		for _, name := range []string{`nvblk_nbd_request_errors_total{errno="EIO",export=""}`, `nvblk_nbd_request_errors_total{errno="EINVAL",export=""}`} {
			if after[name] != 0 {
				t.Errorf("%s = %v", name, after[name])
			}
		}
		for name, want := range map[string]float64{
			`nvblk_export_read_only{export=""}`:                                   0,
			`nvblk_device_from_backup{export=""}`:                                 0,
			`nvblk_device_arenas_in_error{export=""}`:                             0,
			`nvblk_nbd_connections_established`:                                   0,
			`nvblk_nbd_export_connections{export=""}`:                             0,
			`nvblk_nbd_connections_refused_total`:                                 0,
			`nvblk_nbd_request_duration_seconds_count{command="flush",export=""}`: 0,
		} {
			if got, ok := after[name]; !ok || got != want {
				t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
			}
		}
		// fio's nbd engine opens a connection to size the export, then one per job.
		if n := after[`nvblk_nbd_connections_accepted_total`]; n < 1 {
			t.Errorf("%v connections accepted", n)
		}
		if after[`nvblk_export_size_bytes{export=""}`] == 0 {
			t.Error("no export size")
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		if code := p.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit %d\n%s", code, p.stderr)
		}
	})
}

var sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$`)

// scrape reads the Prometheus text exposition at url: sample name with
// its labels (as printed, sorted by label name) to value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET %s: %s %s", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unparsable sample %q", line)
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[m[1]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestServeMaxConnections: with --max-connections 2 a third client
// (nbdinfo) is refused during the handshake, with the reason logged, and
// the first two go on being served.
func TestServeMaxConnections(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	dir := t.TempDir()
	uri, _, stderr, stop := runServe(t, "--socket", filepath.Join(dir, "m.sock"), "--size", "32M", "--max-connections", "2", filepath.Join(dir, "m.img"))
	c1, c2 := dialURI(t, uri), dialURI(t, uri)
	out, err := runTool(t, toolEnv("LIBNBD_DEBUG=1"), nbdinfo, uri)
	if err == nil {
		t.Fatalf("a third client was served:\n%s", out)
	}
	// libnbd reports the server's message in its debug output.
	if !strings.Contains(out, "too many connections") {
		t.Errorf("nbdinfo output lacks the reason:\n%s", out)
	}
	if !strings.Contains(stderr.String(), "refusing NBD_OPT_GO") {
		t.Errorf("refusal not logged:\n%s", stderr)
	}
	for i, c := range []*nbdConn{c1, c2} {
		p := bytes.Repeat([]byte{byte(0xa0 + i)}, 4096)
		if errno, _ := c.cmd(t, 1, uint64(i)*4096, 4096, p); errno != 0 {
			t.Fatalf("client %d write: errno %d", i+1, errno)
		}
		if errno, got := c.cmd(t, 0, uint64(i)*4096, 4096, nil); errno != 0 || !bytes.Equal(got, p) {
			t.Fatalf("client %d read back: errno %d", i+1, errno)
		}
	}
	// A freed slot admits the next client.
	c1.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err = runTool(t, toolEnv(), nbdinfo, "--size", uri)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdinfo after a disconnect: %v\n%s", err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c2.Close()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestServeLogging: -v logs connections with the peer, export and
// counts; --log-format json makes each line a JSON object; bad values
// are usage errors.
func TestServeLogging(t *testing.T) {
	dir := t.TempDir()
	uri, _, stderr, stop := runServe(t, "--socket", filepath.Join(dir, "l.sock"), "--size", "32M", "-v", "--log-format", "json", "--export-name", "disk", filepath.Join(dir, "l.img"))
	c := dialURI(t, uri)
	if errno, _ := c.cmd(t, 1, 0, 4096, make([]byte, 4096)); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	c.Close()
	var closed map[string]any
	for deadline := time.Now().Add(10 * time.Second); closed == nil; time.Sleep(10 * time.Millisecond) {
		for _, line := range strings.Split(stderr.String(), "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("not JSON: %q: %v", line, err)
			}
			if rec["msg"] == "nbd: connection closed" {
				closed = rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection-closed record:\n%s", stderr)
		}
	}
	if closed["level"] != "INFO" || closed["export"] != "disk" || closed["requests"] != float64(1) ||
		closed["bytes_written"] != float64(4096) || !strings.HasPrefix(fmt.Sprint(closed["remote"]), "unix:") {
		t.Errorf("connection-closed record %v", closed)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"--log-level", "loud"}, {"--log-format", "xml"}, {"--max-connections", "-1"}, {"--metrics", "localhost"},
	} {
		var out, errb bytes.Buffer
		code := Main(append(append([]string{"serve"}, args...), filepath.Join(dir, "u.img")), strings.NewReader(""), &out, &errb)
		if code != 16 || !strings.Contains(errb.String(), args[0]) {
			t.Errorf("serve %v: exit %d, stderr %q", args, code, errb.String())
		}
	}
}

func TestMetricsAddr(t *testing.T) {
	for in, want := range map[string]string{
		"9100": "127.0.0.1:9100", ":9100": "127.0.0.1:9100", "127.0.0.1:0": "127.0.0.1:0",
		"[::1]:9100": "[::1]:9100", "0.0.0.0:9100": "0.0.0.0:9100",
	} {
		if got, err := metricsAddr(in); err != nil || got != want {
			t.Errorf("metricsAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := metricsAddr("nope"); err == nil {
		t.Error("metricsAddr accepted a bare host")
	}
}

// TestActivationEnv: LISTEN_PID of another process is ignored, a bad
// LISTEN_FDS for this process is an error naming it, and the variables
// are removed once read. (The descriptors themselves are tested under
// systemd-socket-activate in TestServeService.)
func TestActivationEnv(t *testing.T) {
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()+1))
	t.Setenv("LISTEN_FDS", "1")
	if lns, err := activationListeners(); lns != nil || err != nil {
		t.Fatalf("another process's LISTEN_PID: %v, %v", lns, err)
	}
	for _, fds := range []string{"0", "x", "65", "-1"} {
		t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		t.Setenv("LISTEN_FDS", fds)
		lns, err := activationListeners()
		if lns != nil || err == nil || !strings.Contains(err.Error(), "LISTEN_FDS") {
			t.Errorf("LISTEN_FDS=%s: %v, %v", fds, lns, err)
		}
		if _, ok := os.LookupEnv("LISTEN_PID"); ok {
			t.Errorf("LISTEN_PID left in the environment")
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := listenerURI(ln, "x"); got != "nbd://"+ln.Addr().String()+"/x" {
		t.Errorf("listenerURI = %q", got)
	}
}

// TestContribSystemdUnits: the units in contrib/systemd pass
// systemd-analyze verify (with the test's binary in ExecStart), and the
// service runs nvblk serve with flags it accepts.
func TestContribSystemdUnits(t *testing.T) {
	analyze := testutil.NeedTool(t, "systemd-analyze")
	dir := t.TempDir()
	bin := buildNvblk(t, dir)
	src := filepath.Join(testutil.RepoRoot(), "contrib", "systemd")
	var execStart string
	for _, name := range []string{"nvblk-nbd.socket", "nvblk-nbd.service"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "/usr/local/bin/nvblk", bin)
		if m := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(text); m != nil {
			execStart = m[1]
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runTool(t, toolEnv(), analyze, "verify", filepath.Join(dir, "nvblk-nbd.socket"), filepath.Join(dir, "nvblk-nbd.service"))
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The service's flags parse (--help stops before anything is opened).
	args := strings.Fields(execStart)
	if len(args) < 3 || args[0] != bin || args[1] != "serve" {
		t.Fatalf("ExecStart=%s", execStart)
	}
	if out, err := runTool(t, toolEnv(), bin, append(args[1:len(args)-1], "--help")...); err != nil {
		t.Fatalf("%s --help: %v\n%s", execStart, err, out)
	}
}

// TestServeMetricsDeviceState: a BTT whose primary info block is damaged
// is served read-only from its backup, and the metrics say so; a bad
// request is counted under its errno.
func TestServeMetricsDeviceState(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "b.img")
	var out, errb bytes.Buffer
	if code := Main([]string{"create", "--size", "32M", img}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("create: %s", errb.String())
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The linux format's first info block is at byte 4096.
	if _, err := f.WriteAt([]byte("garbage"), 4096+64); err != nil {
		t.Fatal(err)
	}
	f.Close()
	uri, stdout, _, stop := runServe(t, "--socket", filepath.Join(dir, "b.sock"), "--metrics", "127.0.0.1:0", img)
	var m []string // printed after the listening address
	for deadline := time.Now().Add(10 * time.Second); m == nil; time.Sleep(5 * time.Millisecond) {
		m = regexp.MustCompile(`metrics at (\S+)`).FindStringSubmatch(stdout.String())
		if m == nil && time.Now().After(deadline) {
			t.Fatalf("no metrics address:\n%s", stdout)
		}
	}
	c := dialURI(t, uri)
	if errno, _ := c.cmd(t, 1, 0, 4096, make([]byte, 4096)); errno != 1 { // EPERM
		t.Fatalf("write to a BTT opened from its backup: errno %d", errno)
	}
	if errno, _ := c.cmd(t, 0, 0, 4096, nil); errno != 0 {
		t.Fatalf("read: errno %d", errno)
	}
	got := scrape(t, m[1])
	for name, want := range map[string]float64{
		`nvblk_export_read_only{export=""}`:                       1,
		`nvblk_device_from_backup{export=""}`:                     1,
		`nvblk_device_arenas_in_error{export=""}`:                 0,
		`nvblk_nbd_request_errors_total{errno="EPERM",export=""}`: 1,
		`nvblk_nbd_requests_total{command="write",export=""}`:     1,
		`nvblk_nbd_requests_total{command="read",export=""}`:      1,
		`nvblk_nbd_read_bytes_total{export=""}`:                   4096,
		`nvblk_nbd_written_bytes_total{export=""}`:                0,
		`nvblk_nbd_connections_established`:                       1,
		`nvblk_nbd_export_connections{export=""}`:                 1,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	c.Close()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
