package cli

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/nbd"
	"github.com/nvblk/nvblk/pmemblk"
)

// This file is `nvblk serve --metrics`: Prometheus text exposition at
// /metrics. The request path only adds to the nbd server's atomic
// counters; the collector here reads them (nbd.Server.Stats) at scrape
// time, so serving metrics costs the requests nothing more.

// metricsAddr resolves --metrics: a bare port ("9100") or an empty host
// (":9100") means 127.0.0.1; another host is used as given.
func metricsAddr(s string) (string, error) {
	if _, err := strconv.ParseUint(s, 10, 16); err == nil {
		return net.JoinHostPort("127.0.0.1", s), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", &ExitError{Code: 16, Err: fmt.Errorf("--metrics %q: want PORT or HOST:PORT: %v", s, err)}
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// exportDevices records the device behind each export as exports are
// added (it stands in for the server where addPartitionExports adds
// them), for the device-state metrics.
type exportDevices struct {
	srv  *nbd.Server
	mu   sync.Mutex
	devs map[string]block.Device
}

func (e *exportDevices) AddExport(name, desc string, dev block.Device, readOnly bool) error {
	if err := e.srv.AddExport(name, desc, dev, readOnly); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.devs == nil {
		e.devs = map[string]block.Device{}
	}
	e.devs[name] = dev
	return nil
}

func (e *exportDevices) device(name string) block.Device {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.devs[name]
}

var (
	descRequests = prometheus.NewDesc("nvblk_nbd_requests_total",
		"NBD requests answered, by export and command (failed ones included).", []string{"export", "command"}, nil)
	descLatency = prometheus.NewDesc("nvblk_nbd_request_duration_seconds",
		"Time from a request's header read to its reply handed to the connection's writer.", []string{"export", "command"}, nil)
	descBytesRead = prometheus.NewDesc("nvblk_nbd_read_bytes_total",
		"Bytes returned by successful NBD_CMD_READ requests.", []string{"export"}, nil)
	descBytesWritten = prometheus.NewDesc("nvblk_nbd_written_bytes_total",
		"Bytes stored by successful NBD_CMD_WRITE requests.", []string{"export"}, nil)
	descBytesZeroed = prometheus.NewDesc("nvblk_nbd_zeroed_bytes_total",
		"Bytes zeroed by successful NBD_CMD_TRIM and NBD_CMD_WRITE_ZEROES requests.", []string{"export"}, nil)
	descErrors = prometheus.NewDesc("nvblk_nbd_request_errors_total",
		"NBD requests answered with an error, by export and errno.", []string{"export", "errno"}, nil)
	descExportConns = prometheus.NewDesc("nvblk_nbd_export_connections",
		"Connections in the transmission phase on the export.", []string{"export"}, nil)
	descConnsOpen = prometheus.NewDesc("nvblk_nbd_connections_open",
		"Open NBD connections, in any phase.", nil, nil)
	descConnsEstablished = prometheus.NewDesc("nvblk_nbd_connections_established",
		"NBD connections in the transmission phase (what --max-connections bounds).", nil, nil)
	descConnsAccepted = prometheus.NewDesc("nvblk_nbd_connections_accepted_total",
		"NBD connections accepted since the start.", nil, nil)
	descConnsRefused = prometheus.NewDesc("nvblk_nbd_connections_refused_total",
		"NBD connections refused by a connection limit.", nil, nil)
	descSize = prometheus.NewDesc("nvblk_export_size_bytes",
		"Size of the export.", []string{"export"}, nil)
	descReadOnly = prometheus.NewDesc("nvblk_export_read_only",
		"1 if the export refuses writes (--read-only, or the device's state).", []string{"export"}, nil)
	descFromBackup = prometheus.NewDesc("nvblk_device_from_backup",
		"1 if the BTT or pool was opened from a backup info block (a primary is damaged; the device is read-only).", []string{"export"}, nil)
	descArenasError = prometheus.NewDesc("nvblk_device_arenas_in_error",
		"BTT arenas with the error flag set (the device is read-only).", []string{"export"}, nil)
)

// serveCollector is a prometheus.Collector over the server's counters.
type serveCollector struct {
	srv  *nbd.Server
	devs *exportDevices
}

func (c *serveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descLatency, descBytesRead, descBytesWritten, descBytesZeroed,
		descErrors, descExportConns, descConnsOpen, descConnsEstablished, descConnsAccepted, descConnsRefused,
		descSize, descReadOnly, descFromBackup, descArenasError} {
		ch <- d
	}
}

func (c *serveCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descConnsOpen, float64(st.Connections))
	gauge(descConnsEstablished, float64(st.Established))
	counter(descConnsAccepted, st.Accepted)
	counter(descConnsRefused, st.Refused)
	for _, es := range st.Exports {
		name := es.Name
		for _, cs := range es.Commands {
			if cs.Command == "disc" {
				continue // never answered
			}
			if cs.Requests == 0 && (cs.Command == "other" || cs.Command == "cache") {
				continue
			}
			counter(descRequests, cs.Requests, name, cs.Command)
			buckets := make(map[float64]uint64, len(nbd.LatencyBounds))
			var cum uint64
			for i, b := range nbd.LatencyBounds {
				cum += cs.Buckets[i]
				buckets[b.Seconds()] = cum
			}
			ch <- prometheus.MustNewConstHistogram(descLatency, cs.Requests, cs.Latency.Seconds(), buckets, name, cs.Command)
		}
		counter(descBytesRead, es.BytesRead, name)
		counter(descBytesWritten, es.BytesWritten, name)
		counter(descBytesZeroed, es.BytesZeroed, name)
		for errno, n := range es.Errors {
			counter(descErrors, n, name, errno)
		}
		gauge(descExportConns, float64(es.Connections), name)
		gauge(descSize, float64(es.Size), name)
		gauge(descReadOnly, b2f(es.ReadOnly), name)
		backup, arenas := deviceState(c.devs.device(name))
		gauge(descFromBackup, b2f(backup), name)
		gauge(descArenasError, float64(arenas), name)
	}
}

// deviceState reads a device's health: opened from a backup info block,
// and how many BTT arenas have their error flag set.
func deviceState(dev block.Device) (fromBackup bool, arenasInError int) {
	var b *btt.BTT
	switch d := dev.(type) {
	case *btt.BTT:
		b = d
	case *pmemblk.Pool:
		fromBackup = d.FromBackup()
		b = d.BTT()
	}
	if b != nil {
		fromBackup = fromBackup || b.FromBackup()
		for _, a := range b.Arenas() {
			if a.ErrorFlag {
				arenasInError++
			}
		}
	}
	return fromBackup, arenasInError
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsServer serves /metrics on addr until closed.
type metricsServer struct {
	ln   net.Listener
	http *http.Server
	done chan error
}

func startMetrics(addr string, srv *nbd.Server, devs *exportDevices) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&serveCollector{srv: srv, devs: devs},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "nvblk serve: metrics at /metrics")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics: %w", err)
	}
	m := &metricsServer{ln: ln, done: make(chan error, 1),
		http: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() { m.done <- m.http.Serve(ln) }()
	return m, nil
}

// URL is where the metrics are served.
func (m *metricsServer) URL() string { return "http://" + m.ln.Addr().String() + "/metrics" }

// loopback reports whether the metrics listen on loopback only.
func (m *metricsServer) loopback() bool {
	a, ok := m.ln.Addr().(*net.TCPAddr)
	return ok && a.IP.IsLoopback()
}

func (m *metricsServer) Close() error {
	err := m.http.Close()
	if serr := <-m.done; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
