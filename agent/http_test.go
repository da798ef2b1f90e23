package agent

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
)

// fakeListener stands for *miss.Listener: its round count is the test's.
type fakeListener struct{ turns atomic.Uint64 }

func (l *fakeListener) Stats() miss.ListenerStats { return miss.ListenerStats{} }
func (l *fakeListener) Turns() uint64             { return l.turns.Load() }

// fakeTable stands for *store.Table, synced or not.
type fakeTable struct {
	synced chan struct{}
	stats  store.TableStats
}

func (f *fakeTable) Synced() <-chan struct{}         { return f.synced }
func (f *fakeTable) Stats() store.TableStats         { return f.stats }
func (f *fakeTable) Leases() []store.Lease           { return nil }
func (f *fakeTable) Rejected() []store.RejectedLease { return nil }

// get asks h for path as a client at remote would.
func get(h http.Handler, remote, path string) (int, string) {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = remote
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// TestProbes: /healthz is liveness, /readyz readiness, as in flannel.
// While start-up waits (here: for etcd) the process is live but not
// ready; once the miss path turns, a stall of stallAfter makes it not
// live, and moving again makes it live again.
func TestProbes(t *testing.T) {
	tel := newTelemetry("test")
	tel.stallAfter = 50 * time.Millisecond
	h := tel.handler()
	const local = "127.0.0.1:40000"

	tel.setPhase("connecting to etcd")
	if code, body := get(h, local, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz while starting = %d %q, want 200 ok: waiting for etcd is no reason to restart", code, body)
	}
	if code, body := get(h, local, "/readyz"); code != 503 || !strings.Contains(body, "not ready\n- connecting to etcd\n") {
		t.Errorf("/readyz while starting = %d %q, want 503 naming the phase", code, body)
	}

	table := &fakeTable{synced: make(chan struct{})}
	tel.setTable(table)
	l := &fakeListener{}
	tel.setListener(l, nil)
	tel.setPhase("")
	if code, body := get(h, local, "/readyz"); code != 503 || !strings.Contains(body, "lease table not synced yet") {
		t.Errorf("/readyz with the table loading = %d %q", code, body)
	}
	close(table.synced)
	table.stats.WatchDownSince = time.Now()
	if code, body := get(h, local, "/readyz"); code != 200 || !strings.HasPrefix(body, "ok\n") || !strings.Contains(body, "note: etcd watch down since") {
		t.Errorf("/readyz ready with etcd away = %d %q, want 200 ok with a note", code, body)
	}

	// Round 0: the listener has not started; a long wait is start-up's.
	time.Sleep(2 * tel.stallAfter)
	if code, _ := get(h, local, "/healthz"); code != 200 {
		t.Errorf("/healthz before the miss path turned = %d, want 200", code)
	}
	l.turns.Store(1)
	if code, _ := get(h, local, "/healthz"); code != 200 {
		t.Errorf("/healthz with the miss path turning = %d, want 200", code)
	}
	var code int
	var body string
	deadline := time.Now().Add(5 * time.Second)
	for code, body = get(h, local, "/healthz"); code == 200 && time.Now().Before(deadline); code, body = get(h, local, "/healthz") {
		time.Sleep(5 * time.Millisecond)
	}
	if code != 503 || !strings.Contains(body, "unhealthy\n- the miss path has not come round for") || !strings.Contains(body, "round 1") {
		t.Errorf("/healthz with the miss path stuck = %d %q, want 503 saying so", code, body)
	}
	// Readiness does not follow liveness: the agent is still set up.
	if code, _ := get(h, local, "/readyz"); code != 200 {
		t.Errorf("/readyz with the miss path stuck = %d, want 200", code)
	}
	if s := tel.status(); s.Healthy || len(s.Reasons) != 1 || !strings.Contains(s.Reasons[0], "has not come round") {
		t.Errorf("status with the miss path stuck: healthy %v, reasons %q; want unhealthy saying why", s.Healthy, s.Reasons)
	}
	l.turns.Add(1)
	if code, body := get(h, local, "/healthz"); code != 200 {
		t.Errorf("/healthz once the miss path moves again = %d %q, want 200", code, body)
	}
	if s := tel.status(); !s.Healthy {
		t.Errorf("status live and ready: reasons %q", s.Reasons)
	}
}

// TestDebugLoopbackOnly: /debug/ answers loopback clients only, 403 for the
// rest; metrics, probes and status answer everyone.
func TestDebugLoopbackOnly(t *testing.T) {
	tel := newTelemetry("test")
	h := tel.handler()
	debugPaths := []string{"/debug/leases", "/debug/misses", "/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/symbol", "/debug/nothing-here"}
	for _, remote := range []string{"198.51.100.7:5555", "[2001:db8::7]:5555", "[fe80::1%eth0]:5555", "10.5.1.2:80", "", "garbage"} {
		for _, path := range debugPaths {
			if code, body := get(h, remote, path); code != http.StatusForbidden || !strings.Contains(body, "loopback clients only") {
				t.Errorf("%s from %q = %d %q, want 403 saying why", path, remote, code, body)
			}
		}
		for path, want := range map[string]int{"/metrics": 200, "/healthz": 200, "/readyz": 503, "/status": 200} {
			if code, _ := get(h, remote, path); code != want {
				t.Errorf("%s from %q = %d, want %d", path, remote, code, want)
			}
		}
	}
	for _, remote := range []string{"127.0.0.1:5555", "127.3.4.5:5555", "[::1]:5555", "[::ffff:127.0.0.1]:5555"} {
		for path, want := range map[string]int{"/debug/leases": 200, "/debug/misses": 200, "/debug/pprof/": 200, "/debug/nothing-here": 404} {
			if code, body := get(h, remote, path); code != want {
				t.Errorf("%s from %q = %d %q, want %d", path, remote, code, body, want)
			}
		}
	}
}

// TestHTTPRealListener serves on a real loopback socket, as the agent does:
// a client on this host gets everything.
func TestHTTPRealListener(t *testing.T) {
	tel := newTelemetry("test")
	l, err := listenHTTP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- tel.serveHTTP(ctx, l, zap.NewNop()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveHTTP: %v", err)
		}
	}()
	base := "http://" + l.Addr().String()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 503, "/debug/leases": 200, "/debug/pprof/": 200, "/metrics": 200} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d %q, want %d", path, resp.StatusCode, body, want)
		}
		if path == "/metrics" && !strings.Contains(string(body), "\nvtepd_ready 0\n") {
			t.Errorf("/metrics while starting does not say vtepd_ready 0:\n%s", body)
		}
	}
}
