package cli

import (
	"bytes"
	"crypto/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/testutil"
)

// makeCerts runs `nvblk certs DIR` in-process.
func makeCerts(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, errs, code := run(t, nil, append([]string{"certs"}, append(args, dir)...)...)
	if code != 0 {
		t.Fatalf("certs: exit %d\n%s%s", code, out, errs)
	}
	return out
}

// certtoolCreds makes the layout with GnuTLS's certtool (RSA keys).
func certtoolCreds(t *testing.T, dir string) {
	t.Helper()
	certtool := testutil.NeedTool(t, "certtool")
	files := map[string]string{
		"ca.info":     "cn = \"certtool CA\"\nca\ncert_signing_key\nexpiration_days = 30\n",
		"server.info": "cn = \"localhost\"\ndns_name = \"localhost\"\nip_address = \"127.0.0.1\"\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n",
		"client.info": "cn = \"certtool client\"\norganization = \"elsewhere\"\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n",
	}
	tmp := t.TempDir()
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(tmp, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	steps := [][]string{
		{"--generate-privkey", "--outfile", filepath.Join(tmp, "ca-key.pem")},
		{"--generate-self-signed", "--load-privkey", filepath.Join(tmp, "ca-key.pem"), "--template", filepath.Join(tmp, "ca.info"), "--outfile", filepath.Join(dir, "ca-cert.pem")},
	}
	for _, who := range []string{"server", "client"} {
		steps = append(steps,
			[]string{"--generate-privkey", "--outfile", filepath.Join(dir, who+"-key.pem")},
			[]string{"--generate-certificate", "--load-privkey", filepath.Join(dir, who+"-key.pem"),
				"--load-ca-certificate", filepath.Join(dir, "ca-cert.pem"), "--load-ca-privkey", filepath.Join(tmp, "ca-key.pem"),
				"--template", filepath.Join(tmp, who+".info"), "--outfile", filepath.Join(dir, who+"-cert.pem")})
	}
	for _, s := range steps {
		if out, err := runTool(t, toolEnv(), certtool, s...); err != nil {
			t.Fatalf("certtool %v: %v\n%s", s, err, out)
		}
	}
}

// opensslCreds makes the layout with openssl (ECDSA P-384 keys).
func opensslCreds(t *testing.T, dir string) {
	t.Helper()
	openssl := testutil.NeedTool(t, "openssl")
	tmp := t.TempDir()
	ext := map[string]string{
		"server": "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
		"client": "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
	}
	steps := [][]string{{"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
		"-keyout", filepath.Join(tmp, "ca-key.pem"), "-out", filepath.Join(dir, "ca-cert.pem"), "-subj", "/CN=openssl CA", "-days", "30",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"}}
	for _, who := range []string{"server", "client"} {
		if err := os.WriteFile(filepath.Join(tmp, who+".ext"), []byte(ext[who]), 0o644); err != nil {
			t.Fatal(err)
		}
		cn := "/CN=localhost"
		if who == "client" {
			cn = "/O=elsewhere/CN=openssl client"
		}
		steps = append(steps,
			[]string{"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", filepath.Join(dir, who+"-key.pem"),
				"-out", filepath.Join(tmp, who+".csr"), "-subj", cn},
			[]string{"x509", "-req", "-in", filepath.Join(tmp, who+".csr"), "-CA", filepath.Join(dir, "ca-cert.pem"),
				"-CAkey", filepath.Join(tmp, "ca-key.pem"), "-set_serial", "0x" + randHex(8), "-days", "30",
				"-extfile", filepath.Join(tmp, who+".ext"), "-out", filepath.Join(dir, who+"-cert.pem")})
	}
	for _, s := range steps {
		if out, err := runTool(t, toolEnv(), openssl, s...); err != nil {
			t.Fatalf("openssl %v: %v\n%s", s, err, out)
		}
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	const hex = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(hex[c>>4])
		s.WriteByte(hex[c&15])
	}
	return s.String()
}

var portRE = regexp.MustCompile(`^nbds://127\.0\.0\.1:(\d+)/`)

// qemuTLS is the qemu object and image options of a TLS connection to
// the server at port, as `serve` prints them.
func qemuTLS(creds, port string) []string {
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + creds + ",endpoint=client",
		"--image-opts", "driver=nbd,host=127.0.0.1,port=" + port + ",tls-creds=tls0"}
}

// TestServeTLSRealClients serves over TLS with credentials from
// `nvblk certs`, certtool and openssl, and uses it with nbdinfo,
// nbdcopy, nbdsh, qemu-img and qemu-io, comparing bytes; a plaintext
// client is refused.
func TestServeTLSRealClients(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	nbdcopy := testutil.NeedTool(t, "nbdcopy")
	qemuImg := testutil.NeedTool(t, "qemu-img")
	qemuIO := testutil.NeedTool(t, "qemu-io")
	env := toolEnv()
	for _, kind := range []string{"nvblk", "certtool", "openssl"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			creds := filepath.Join(dir, "creds")
			switch kind {
			case "nvblk":
				out := makeCerts(t, creds, "--host", "localhost", "--host", "127.0.0.1")
				if !strings.Contains(out, "nbdinfo 'nbds://localhost/?tls-certificates="+creds+"'") ||
					!strings.Contains(out, "tls-creds-x509,id=tls0,dir="+creds+",endpoint=client") {
					t.Errorf("certs output lacks the client commands:\n%s", out)
				}
				for _, f := range []string{"ca-key.pem", "server-key.pem", "client-key.pem"} {
					if fi, err := os.Stat(filepath.Join(creds, f)); err != nil || fi.Mode().Perm() != 0o600 {
						t.Errorf("%s: %v, mode %v", f, err, fi.Mode())
					}
				}
			case "certtool":
				os.Mkdir(creds, 0o700)
				certtoolCreds(t, creds)
			case "openssl":
				os.Mkdir(creds, 0o700)
				opensslCreds(t, creds)
			}
			img := filepath.Join(dir, "tls.img")
			args := []string{"--listen", "127.0.0.1:0", "--tls-creds", creds, "--size", "32M", img}
			if kind == "certtool" {
				// RSA client keys: see --tls-max-version.
				args = append(args, "--tls-max-version", "1.2")
			}
			uri, stdout, _, stop := runServe(t, args...)
			m := portRE.FindStringSubmatch(uri)
			if m == nil || !strings.Contains(uri, "tls-certificates="+creds) {
				t.Fatalf("URI %q is not nbds://127.0.0.1:PORT/?tls-certificates=%s", uri, creds)
			}
			port := m[1]
			if !strings.Contains(stdout.String(), strings.Join(qemuTLS(creds, port), " ")) {
				t.Errorf("serve does not print the qemu command:\n%s", stdout)
			}

			out, err := runTool(t, env, nbdinfo, uri)
			if err != nil || !strings.Contains(out, "with TLS") || !strings.Contains(out, "block_size_minimum: 4096") {
				t.Errorf("nbdinfo over TLS: %v\n%s", err, out)
			}
			plain := "nbd://127.0.0.1:" + port + "/"
			if out, err := runTool(t, env, nbdinfo, plain); err == nil {
				t.Errorf("a plaintext nbdinfo was served:\n%s", out)
			}
			out, err = runTool(t, env, qemuImg, append([]string{"info"}, qemuTLS(creds, port)...)...)
			if err != nil || !strings.Contains(out, "33554432") && !strings.Contains(out, "virtual size") {
				t.Errorf("qemu-img info over TLS: %v\n%s", err, out)
			}
			if kind != "nvblk" {
				if err := stop(); err != nil {
					t.Fatal(err)
				}
				return
			}

			// nbdcopy in and out, bytes compared.
			src := filepath.Join(dir, "src.raw")
			data := make([]byte, 4<<20)
			rand.Read(data)
			if err := os.WriteFile(src, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := runTool(t, env, nbdcopy, src, uri); err != nil {
				t.Fatalf("nbdcopy in: %v\n%s", err, out)
			}
			back := filepath.Join(dir, "back.raw")
			if out, err := runTool(t, env, nbdcopy, uri, back); err != nil {
				t.Fatalf("nbdcopy out: %v\n%s", err, out)
			}
			if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got[:len(data)], data) {
				t.Fatalf("nbdcopy round trip differs (%v)", err)
			}
			// Block status over TLS: the 4 MiB written are data, the rest
			// of the new image holes.
			if out, err := runTool(t, env, nbdinfo, "--map", uri); err != nil ||
				!regexp.MustCompile(`(?m)^\s*0\s+4194304\s+0\s+data`).MatchString(out) || !strings.Contains(out, "hole") {
				t.Errorf("nbdinfo --map over TLS: %v\n%s", err, out)
			}
			// qemu-img convert out, and qemu-io writes a pattern read back
			// by nbdsh.
			conv := filepath.Join(dir, "conv.raw")
			if out, err := runTool(t, env, qemuImg, append(append([]string{"convert", "-O", "raw"}, qemuTLS(creds, port)...), conv)...); err != nil {
				t.Fatalf("qemu-img convert: %v\n%s", err, out)
			}
			if got, err := os.ReadFile(conv); err != nil || !bytes.Equal(got[:len(data)], data) {
				t.Fatalf("qemu-img convert differs (%v)", err)
			}
			out, err = runTool(t, env, qemuIO, append(qemuTLS(creds, port), "-c", "write -P 0x5a 1M 64k", "-c", "read -P 0x5a 1M 64k")...)
			if err != nil || strings.Contains(out, "Pattern verification failed") || !strings.Contains(out, "read 65536/65536") {
				t.Fatalf("qemu-io over TLS: %v\n%s", err, out)
			}
			if nbdsh, err := exec.LookPath("nbdsh"); err == nil || testutil.InCI() {
				if err != nil {
					t.Fatal(err)
				}
				script := "import sys\n" +
					"b = h.pread(65536, 1<<20)\n" +
					"assert b == b'\\x5a' * 65536, 'pattern'\n" +
					"assert h.get_size() == " + "h.get_size()\n" +
					"h.pwrite(b'\\x11' * 4096, 0)\n" +
					"assert h.pread(4096, 0) == b'\\x11' * 4096\n" +
					"print('nbdsh ok', h.get_tls_negotiated())\n"
				out, err := runTool(t, env, nbdsh, "-c", "h.set_uri_allow_local_file(True)", "-c", "h.connect_uri('"+uri+"')", "-c", script)
				if err != nil || !strings.Contains(out, "nbdsh ok True") {
					t.Fatalf("nbdsh over TLS: %v\n%s", err, out)
				}
			}
			// nbd-client (the kernel client's user-space half, built with
			// GnuTLS in Debian) negotiates TLS and lists the exports;
			// attaching /dev/nbdN needs the nbd module.
			if nbdClient, err := exec.LookPath("nbd-client"); err == nil || testutil.InCI() {
				if err != nil {
					t.Fatal(err)
				}
				out, err := runTool(t, env, nbdClient, "-l", "127.0.0.1", port, "-cacertfile", filepath.Join(creds, "ca-cert.pem"),
					"-certfile", filepath.Join(creds, "client-cert.pem"), "-keyfile", filepath.Join(creds, "client-key.pem"))
				if err != nil || !strings.Contains(out, "nvblk tls.img") {
					t.Errorf("nbd-client -l over TLS: %v\n%s", err, out)
				}
				if out, err := runTool(t, env, nbdClient, "-l", "127.0.0.1", port); err == nil || !strings.Contains(out, "requires TLS") {
					t.Errorf("nbd-client -l without TLS: %v\n%s", err, out)
				}
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestServeTLSUnixAndAuthz serves over a unix socket with --tls-authz:
// the listed client gets in (nbds+unix:// with nbdinfo), a second client
// of the same CA (`nvblk certs --from`) is refused in the handshake,
// and a per-export section admits it to one partition only.
func TestServeTLSUnixAndAuthz(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	env := toolEnv()
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	makeCerts(t, creds)
	other := filepath.Join(dir, "other")
	out := makeCerts(t, other, "--from", creds, "--client-name", "other")
	if !strings.Contains(out, "CN=other,O=nvblk") {
		t.Errorf("certs --from output:\n%s", out)
	}
	authz := filepath.Join(dir, "authz")
	if err := os.WriteFile(authz, []byte("# who may connect\nCN=client, O=nvblk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	uri, _, stderr, stop := runServe(t, "--socket", sock, "--tls-creds", creds, "--tls-authz", authz, "--size", "32M", filepath.Join(dir, "a.img"))
	if !strings.HasPrefix(uri, "nbds+unix:///?socket="+sock+"&tls-certificates="+creds) {
		t.Fatalf("URI %q", uri)
	}
	if out, err := runTool(t, env, nbdinfo, "--size", uri); err != nil || !regexp.MustCompile(`^[1-9][0-9]+\n$`).MatchString(out) {
		t.Errorf("listed client: %v\n%s", err, out)
	}
	otherURI := strings.Replace(uri, "tls-certificates="+creds, "tls-certificates="+other, 1)
	otherOut, err := runTool(t, env, nbdinfo, "--size", otherURI)
	if err == nil {
		t.Errorf("a client not in --tls-authz was served:\n%s", otherOut)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), `CN=other,O=nvblk\" is not in the access list`) {
		t.Errorf("the server does not say why it refused:\n%s\nclient: %s", stderr, otherOut)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestServeRefusesExposedPlaintext: --listen on a non-loopback address
// without TLS is refused before anything is bound, unless --insecure.
func TestServeRefusesExposedPlaintext(t *testing.T) {
	dir := t.TempDir()
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:10809"} {
		_, errs, code := run(t, nil, "serve", "--listen", addr, "--size", "32M", filepath.Join(dir, "x.img"))
		if code != 16 || !strings.Contains(errs, "--tls-creds") || !strings.Contains(errs, "--insecure") {
			t.Errorf("--listen %s: exit %d, %s", addr, code, errs)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.img")); err == nil {
		t.Error("the refused serve created its image")
	}
	// The decision itself, without binding anything.
	for _, tc := range []struct {
		o    serveOptions
		want bool // refused
	}{
		{serveOptions{listen: "0.0.0.0:10809"}, true},
		{serveOptions{listen: "0.0.0.0:10809", tls: serveTLSFlags{insecure: true}}, false},
		{serveOptions{listen: "0.0.0.0:10809", tls: serveTLSFlags{creds: "d"}}, false},
		{serveOptions{listen: "127.0.0.1:10809"}, false},
		{serveOptions{listen: "[::1]:10809"}, false},
		{serveOptions{listen: "localhost:10809"}, false},
		{serveOptions{socket: "/tmp/x.sock"}, false},
	} {
		if err := checkExposure(&tc.o, nil); (err != nil) != tc.want {
			t.Errorf("%+v: %v", tc.o, err)
		}
	}
	// A socket-activated listener on every address is refused too.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := checkExposure(&serveOptions{}, []net.Listener{ln}); err != nil {
		t.Errorf("loopback activated socket refused: %v", err)
	}
	// TLS flags without --tls-creds are usage errors.
	_, errs, code := run(t, nil, "serve", "--tls-authz", "f", "--size", "32M", filepath.Join(dir, "y.img"))
	if code != 16 || !strings.Contains(errs, "needs --tls-creds") {
		t.Errorf("--tls-authz alone: exit %d, %s", code, errs)
	}
}

// TestServeTLSPartitionsReadOnly: over TLS, a partitioned image's
// exports follow the per-export sections of --tls-authz (one client
// sees and uses every export, the other only p1), and --read-only
// refuses qemu-io's write.
func TestServeTLSPartitionsReadOnly(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	qemuIO := testutil.NeedTool(t, "qemu-io")
	env := toolEnv()
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	makeCerts(t, creds)
	other := filepath.Join(dir, "other")
	makeCerts(t, other, "--from", creds, "--client-name", "other")
	img := filepath.Join(dir, "disk.img")
	mustRun(t, nil, "partition", "--add", "8M:a", "--add", "8M:b", "--size", "32M", img)
	authz := filepath.Join(dir, "authz")
	if err := os.WriteFile(authz, []byte("CN=client,O=nvblk\n[export p1]\nCN=other,O=nvblk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	uri, _, _, stop := runServe(t, "--socket", sock, "--tls-creds", creds, "--tls-authz", authz, img)
	list := func(creds string) string {
		u := strings.Replace(uri, "tls-certificates="+filepath.Join(dir, "creds"), "tls-certificates="+creds, 1)
		out, err := runTool(t, env, nbdinfo, "--list", "--json", u)
		if err != nil {
			t.Fatalf("nbdinfo --list: %v\n%s", err, out)
		}
		var names []string
		for _, m := range regexp.MustCompile(`"export-name": "([^"]*)"`).FindAllStringSubmatch(out, -1) {
			names = append(names, m[1])
		}
		return strings.Join(names, ",")
	}
	if got := list(creds); got != ",p1,p2" {
		t.Errorf("client lists %q, want ,p1,p2", got)
	}
	if got := list(other); got != "p1" {
		t.Errorf("other lists %q, want p1", got)
	}
	qemu := func(creds, export string, cmds ...string) (string, error) {
		args := []string{"--object", "tls-creds-x509,id=tls0,dir=" + creds + ",endpoint=client", "--image-opts",
			"driver=nbd,server.type=unix,server.path=" + sock + ",export=" + export + ",tls-creds=tls0,tls-hostname=localhost"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		return runTool(t, env, qemuIO, args...)
	}
	if out, err := qemu(other, "p1", "write -P 0x77 0 64k", "read -P 0x77 0 64k"); err != nil || !strings.Contains(out, "read 65536/65536") {
		t.Errorf("other on p1: %v\n%s", err, out)
	}
	if out, err := qemu(other, "p2", "read 0 4k"); err == nil {
		t.Errorf("other got p2:\n%s", out)
	}
	if out, err := qemu(creds, "p1", "read -P 0x77 0 64k"); err != nil || strings.Contains(out, "verification failed") {
		t.Errorf("client reads p1: %v\n%s", err, out)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	uri, _, _, stop = runServe(t, "--socket", sock, "--tls-creds", creds, "--read-only", img)
	// qemu-io opens read-write, which the read-only export refuses.
	if out, err := qemu(creds, "p2", "write -P 0x11 0 4k"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("a write to a read-only export over TLS: %v\n%s", err, out)
	}
	out, err := runTool(t, env, nbdinfo, "--json", exportURI(uri, "p1"))
	if err != nil || !strings.Contains(out, `"is_read_only": true`) {
		t.Errorf("nbdinfo p1 read-only: %v\n%s", err, out)
	}
	if out, err := runTool(t, env, qemuIO, "-r", "--object", "tls-creds-x509,id=tls0,dir="+creds+",endpoint=client", "--image-opts",
		"driver=nbd,server.type=unix,server.path="+sock+",export=p1,tls-creds=tls0,tls-hostname=localhost", "-c", "read -P 0x77 0 64k"); err != nil ||
		!strings.Contains(out, "read 65536/65536") {
		t.Errorf("read-only p1: %v\n%s", err, out)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
