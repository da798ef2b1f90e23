package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// DefaultHTTPAddr is where metrics, health and status are served.
const DefaultHTTPAddr = "127.0.0.1:9742"

// handler serves the agent's HTTP API, with flannel's meaning of the
// probes:
//
//	/metrics        Prometheus exposition
//	/healthz        liveness: 200 "ok" while the miss path comes round, else 503 and why
//	/readyz         readiness: 200 "ok" once device, lease and table are ready, else 503 and the reasons
//	/status         the agent's state as JSON (vtepd status)
//	/debug/leases   the lease table as JSON, rejected leases included
//	/debug/misses   the last misses, newest first (?n= limits them)
//	/debug/pprof/   Go's profiler
//
// Everything under /debug/ answers loopback clients only (see
// loopbackOnly); the rest answers whoever reaches --http-addr.
func (t *telemetry) handler() http.Handler {
	debug := http.NewServeMux()
	debug.HandleFunc("/debug/leases", t.serveLeases)
	debug.HandleFunc("/debug/misses", t.serveMisses)
	debug.HandleFunc("/debug/pprof/", pprof.Index)
	debug.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	debug.HandleFunc("/debug/pprof/profile", pprof.Profile)
	debug.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	debug.HandleFunc("/debug/pprof/trace", pprof.Trace)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { writeHealth(w, t.liveness(), "unhealthy") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { writeHealth(w, t.readiness(), "not ready") })
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, t.status()) })
	mux.Handle("/debug/", loopbackOnly(debug))
	return mux
}

// loopbackOnly serves h to clients whose source address is a loopback
// address, and 403 to everyone else. --http-addr may expose metrics and
// probes to a scraper on another host, but the debug endpoints are for the
// operator on this one: pprof's cmdline shows the command line (an
// --etcd-password with it), a CPU profile or trace costs the miss path
// while it runs, and the lease table is a map of the cluster. 403 rather
// than 404: the paths are documented, hiding them protects nothing, and
// "forbidden, from here" tells the operator what to change where a 404
// would send them looking for a typo.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r) {
			http.Error(w, "vtepd: /debug/ answers loopback clients only: ask from this host, on 127.0.0.1 or ::1", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// fromLoopback says whether r came from a loopback address. A request from
// this host to one of its other addresses comes from that address, not
// from loopback, and is refused: only the source address counts.
func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// writeHealth writes a probe's answer: "ok", or 503 with no and the
// reasons, and any notes either way.
func writeHealth(w http.ResponseWriter, h Health, no string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var b strings.Builder
	if h.Healthy {
		b.WriteString("ok\n")
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
		b.WriteString(no + "\n")
		for _, r := range h.Reasons {
			fmt.Fprintf(&b, "- %s\n", r)
		}
	}
	for _, n := range h.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	w.Write([]byte(b.String()))
}

func (t *telemetry) serveLeases(w http.ResponseWriter, _ *http.Request) {
	t.mu.Lock()
	table, own := t.table, t.own
	t.mu.Unlock()
	out := struct {
		Leases   []leaseJSON `json:"leases"`
		Rejected []leaseJSON `json:"rejected"`
	}{Leases: []leaseJSON{}, Rejected: []leaseJSON{}}
	if table != nil {
		var ownKey string
		if own != nil {
			ownKey = own.Lease().Key
		}
		for _, l := range table.Leases() {
			out.Leases = append(out.Leases, toLeaseJSON(l, ownKey))
		}
		for _, r := range table.Rejected() {
			j := toLeaseJSON(r.Lease, ownKey)
			j.Rejected = r.Reason
			out.Rejected = append(out.Rejected, j)
		}
	}
	writeJSON(w, out)
}

func (t *telemetry) serveMisses(w http.ResponseWriter, r *http.Request) {
	n := recentSize
	if s := r.URL.Query().Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			http.Error(w, fmt.Sprintf("n=%q: want a positive number", s), http.StatusBadRequest)
			return
		}
		n = v
	}
	out := []missJSON{}
	for _, m := range t.recent.last(n) {
		out = append(out, toMissJSON(m))
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// listenHTTP binds addr ("" disables the server).
func listenHTTP(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("agent: --http-addr %s is in use: another vtepd already runs in this network namespace, or another program holds the port (a second agent for another device needs its own --http-addr)", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: listen on --http-addr %s: %w", addr, err)
	}
	return l, nil
}

// serveHTTP serves t on l until ctx is done.
func (t *telemetry) serveHTTP(ctx context.Context, l net.Listener, log *zap.Logger) error {
	srv := &http.Server{
		Handler:           t.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("agent: http: %w", err)
	}
	return nil
}
