package netns_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vtepd/vtepd/monitor"
	"github.com/vtepd/vtepd/test/netns"
)

// TestObservability drives real misses through a real vtepd and checks what
// an operator debugging them gets: metrics, health, the recent misses, the
// lease table, `vtepd monitor`, `vtepd status` and `vtepd leases`.
func TestObservability(t *testing.T) {
	t.Parallel()
	lab := newLab(t, "vtobs")
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	c := etcdClient(t, lab)
	o := &overlay{lab: lab}

	t.Run("health while starting", func(t *testing.T) {
		h1, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		p, err := h1.StartVtepdNoWait()
		if err != nil {
			t.Fatal(err)
		}
		expectHealth(t, h1, 503, "waiting for the network config to be written to /coreos.com/network/config")
		put(t, c, prefix+"/config", overlayConfig)
		if err := h1.WaitReady(p, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		expectHealth(t, h1, 200, "ok")
		if _, err := h1.AddContainer(8); err != nil {
			t.Fatal(err)
		}
		o.hosts = append(o.hosts, h1)
		o.addHost(t, 8)
	})
	if t.Failed() {
		return
	}
	h1, h2 := o.hosts[0], o.hosts[1]
	before := scrape(t, h1)

	// A monitor next to vtepd, from before the misses. It reads the
	// kernel's entries half a second after each miss (the default is
	// 50 ms): a loaded machine, other tests beside this one, can delay a
	// race-built vtepd's first answer past 50 ms, and the monitor would
	// rightly say the entries were not there yet.
	mon, err := lab.Start(h1.NS, "h1.monitor", lab.Bin.Vtepd, "monitor", "--json", "--settle", "500ms",
		"--etcd-endpoints", strings.Join(lab.Endpoints(), ","))
	if err != nil {
		t.Fatal(err)
	}
	// The monitor lists leases before it subscribes; wait for it.
	waitListening(t, mon)

	// Misses: four fresh addresses answered, one with no lease (the kernel
	// asks about it three times), and the reply path on h2.
	answered := h2.Container.Extra[:4]
	for _, a := range answered {
		firstPing(t, h1, a)
	}
	nowhere := netip.MustParseAddr("10.5.255.77") // no lease: newFakes hands out from .250 down
	if leaseFor(t, o, nowhere) {
		t.Skip("test bug: a host leased 10.5.255.0/24 at random; rerun")
	}
	touch(t, h1, nowhere)
	// The kernel asks about nowhere three times, 1 s apart: wait until vtepd
	// has counted three and the monitor (--settle later) shown three; the
	// subtests below check that it was exactly three.
	if err := netns.Poll(10*time.Second, func() error {
		noLease := func(f map[string]*dto.MetricFamily) float64 {
			return value(f, "vtepd_misses_total", "kind", "L3", "outcome", "no_lease")
		}
		if d := noLease(scrape(t, h1)) - noLease(before); d < 3 {
			return fmt.Errorf("vtepd counted %v no_lease misses so far", d)
		}
		if n := strings.Count(mon.Log(), `"ip":"`+nowhere.String()+`"`); n < 3 {
			return fmt.Errorf("the monitor showed %d misses for %s so far", n, nowhere)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	t.Run("metrics count the misses", func(t *testing.T) {
		after := scrape(t, h1)
		delta := func(name string, labels ...string) float64 {
			return value(after, name, labels...) - value(before, name, labels...)
		}
		if d := delta("vtepd_misses_total", "kind", "L3", "outcome", "answered"); d != 4 {
			t.Errorf("answered L3 misses went up by %v, want 4", d)
		}
		if d := delta("vtepd_misses_total", "kind", "L3", "outcome", "no_lease"); d != 3 {
			t.Errorf("no_lease L3 misses went up by %v, want 3 (the kernel's three probes)", d)
		}
		var allL3 float64
		for _, o := range []string{"answered", "own_subnet", "no_lease", "outside_overlay", "error"} {
			allL3 += value(after, "vtepd_misses_total", "kind", "L3", "outcome", o)
		}
		if n := histCount(after, "vtepd_miss_response_seconds", "kind", "L3"); n != allL3 {
			t.Errorf("response time histogram counted %v L3 misses, the counter %v", n, allL3)
		}
		if d := delta("vtepd_kernel_writes_total", "op", "set_neigh"); d != 4 {
			t.Errorf("set_neigh writes went up by %v, want 4", d)
		}
		if v := value(after, "vtepd_kernel_write_errors_total", "op", "set_neigh", "reason", "table_full"); v != 0 {
			t.Errorf("table_full errors: %v", v)
		}
		k, err := h1.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		var neigh float64
		for _, m := range after["vtepd_entries"].GetMetric() {
			if label(m, "kind") == "neighbour" {
				neigh += m.GetGauge().GetValue()
			}
		}
		if neigh != float64(len(k.Neighbours)) || value(after, "vtepd_entries", "kind", "fdb", "state", "permanent") != float64(len(k.FDB)) {
			t.Errorf("entries gauge says %v neighbours and %v fdb, the kernel %d and %d", neigh,
				value(after, "vtepd_entries", "kind", "fdb", "state", "permanent"), len(k.Neighbours), len(k.FDB))
		}
		if v := value(after, "vtepd_leases", "state", "admitted"); v != 2 {
			t.Errorf("leases gauge %v, want 2", v)
		}
		if v := value(after, "vtepd_own_lease_expiry_seconds"); v < 86000 || v > 86400 {
			t.Errorf("own lease expires in %v s, want about a day", v)
		}
		for _, name := range []string{"vtepd_netlink_overflows_total", "vtepd_etcd_relists_total", "vtepd_etcd_watch_restarts_total",
			"vtepd_sweeps_total", "vtepd_sweep_answered_total", "vtepd_invalid_leases_total", "vtepd_lease_conflicts_total"} {
			if _, ok := after[name]; !ok {
				t.Errorf("metric %s is not exported", name)
			}
		}
		if value(after, "vtepd_ready") != 1 || value(after, "vtepd_etcd_watching") != 1 {
			t.Errorf("ready %v, etcd watching %v; want 1 and 1", value(after, "vtepd_ready"), value(after, "vtepd_etcd_watching"))
		}
	})

	t.Run("recent misses and leases", func(t *testing.T) {
		var misses []struct {
			IP, Outcome, Lease, State string
			LatencyUS                 float64 `json:"latency_us"`
		}
		getJSON(t, h1, "/debug/misses?n=50", &misses)
		got := map[string]string{}
		for _, m := range misses {
			if m.Outcome == "answered" && (m.Lease == "" || m.LatencyUS <= 0) {
				t.Errorf("answered miss %s shows lease %q, latency %v µs", m.IP, m.Lease, m.LatencyUS)
			}
			got[m.IP] = m.Outcome
		}
		for _, a := range answered {
			if got[a.String()] != "answered" {
				t.Errorf("/debug/misses shows %s as %q, want answered", a, got[a.String()])
			}
		}
		if got[nowhere.String()] != "no_lease" {
			t.Errorf("/debug/misses shows %s as %q, want no_lease", nowhere, got[nowhere.String()])
		}
		var leases struct {
			Leases []struct {
				Subnet string
				Own    bool
			}
		}
		getJSON(t, h1, "/debug/leases", &leases)
		own := 0
		for _, l := range leases.Leases {
			if l.Own {
				own++
				if l.Subnet != mustSubnet(t, h1).String() {
					t.Errorf("/debug/leases marks %s as own", l.Subnet)
				}
			}
		}
		if len(leases.Leases) != 2 || own != 1 {
			t.Errorf("/debug/leases: %+v", leases)
		}
	})

	t.Run("debug log has every field", func(t *testing.T) {
		for _, e := range h1.Vtepd.Entries("miss") {
			if e.Str("ip") != answered[0].String() || e.Str("outcome") != "answered" {
				continue
			}
			for _, f := range []string{"kind", "ip", "state", "outcome", "lease", "vtep", "vtep_mac", "latency"} {
				if e[f] == nil {
					t.Errorf("debug line for %s lacks %q: %v", answered[0], f, e)
				}
			}
			return
		}
		t.Errorf("no debug line for the miss of %s", answered[0])
	})

	t.Run("monitor saw them, next to vtepd", func(t *testing.T) {
		if err := mon.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if err := mon.Wait(5 * time.Second); err != nil {
			t.Fatalf("monitor did not exit cleanly on Ctrl-C: %v\n%s", err, mon.Tail(5))
		}
		var events []monitor.Event
		for _, line := range strings.Split(mon.Log(), "\n") {
			var ev monitor.Event
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Kind != "" {
				events = append(events, ev)
			}
		}
		seen, nowhereSeen := map[string]bool{}, 0
		for _, ev := range events {
			if ev.Device != device {
				t.Errorf("event on %q", ev.Device)
			}
			switch {
			case ev.IP == nowhere.String():
				nowhereSeen++
				if ev.Verdict != "no_lease" || ev.Lease != nil {
					t.Errorf("monitor says %s for %s, want no_lease", ev.Verdict, ev.IP)
				}
			case ev.Verdict == "answer" && ev.Right != nil && *ev.Right && ev.Lease != nil:
				seen[ev.IP] = true
			}
		}
		for _, a := range answered {
			if !seen[a.String()] {
				t.Errorf("monitor did not show %s answered with the right entries; events: %+v", a, events)
			}
		}
		if nowhereSeen != 3 {
			t.Errorf("monitor showed %d misses for %s, want the kernel's 3", nowhereSeen, nowhere)
		}
	})

	t.Run("monitor filters", func(t *testing.T) {
		l2, err := lab.Start(h1.NS, "h1.monitor-l2", lab.Bin.Vtepd, "monitor", "--json", "--kind", "l2")
		if err != nil {
			t.Fatal(err)
		}
		other, err := lab.Start(h1.NS, "h1.monitor-dev", lab.Bin.Vtepd, "monitor", "--json", "--dev", "flannel.9")
		if err != nil {
			t.Fatal(err)
		}
		waitListening(t, l2)
		waitListening(t, other)
		firstPing(t, h1, h2.Container.Extra[5])
		for _, p := range []*netns.Process{l2, other} {
			p.Signal(syscall.SIGINT)
			if err := p.Wait(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(p.Log(), `"kind":"L3"`) {
				t.Errorf("%s showed a miss it was told to filter out:\n%s", p.Name, p.Tail(3))
			}
		}
	})

	t.Run("status and leases commands", func(t *testing.T) {
		out, err := h1.Exec(lab.Bin.Vtepd, "status")
		if err != nil || !strings.Contains(out, "healthy") || !strings.Contains(out, "own lease   "+mustSubnet(t, h1).String()) {
			t.Errorf("vtepd status: %v\n%s", err, out)
		}
		out, err = h1.Exec(lab.Bin.Vtepd, "leases", "--etcd-endpoints", strings.Join(lab.Endpoints(), ","))
		if err != nil || !strings.Contains(out, mustSubnet(t, h2).String()) || !strings.Contains(out, "vxlan") {
			t.Errorf("vtepd leases: %v\n%s", err, out)
		}
	})

	t.Run("health: device down, etcd down", func(t *testing.T) {
		if _, err := h1.Exec("ip", "link", "set", device, "down"); err != nil {
			t.Fatal(err)
		}
		expectHealth(t, h1, 503, "device flannel.1 is down")
		if out, err := h1.Exec(lab.Bin.Vtepd, "status"); err == nil || !strings.Contains(out, "UNHEALTHY") {
			t.Errorf("vtepd status on an unhealthy agent: %v\n%s", err, out)
		}
		if _, err := h1.Exec("ip", "link", "set", device, "up"); err != nil {
			t.Fatal(err)
		}
		// Down took the overlay route with it; vtepd puts it back.
		expectHealth(t, h1, 200, "ok")
		if len(h1.Vtepd.Entries("restored the device's address and routes")) == 0 {
			t.Errorf("vtepd did not say it restored the route")
		}
		firstPing(t, h1, h2.Container.Extra[7])

		// A route deleted by hand comes back too, and health says so
		// meanwhile or not at all.
		if _, err := h1.Exec("ip", "route", "del", overlayPrefix, "dev", device); err != nil {
			t.Fatal(err)
		}
		if err := netns.Poll(5*time.Second, func() error {
			k, err := h1.Kernel(device)
			if err != nil || len(k.Routes) != 1 {
				return errStillThere
			}
			return nil
		}); err != nil {
			t.Errorf("the overlay route deleted by hand was not restored")
		}

		// etcd down: still healthy, answering from the table, and says so.
		for _, e := range lab.Etcd() {
			e.Kill()
		}
		expectHealth(t, h1, 200, "note: etcd watch down since")
		if v := value(scrape(t, h1), "vtepd_etcd_watching"); v != 0 {
			t.Errorf("vtepd_etcd_watching = %v with etcd down", v)
		}
		firstPing(t, h1, h2.Container.Extra[6])
		for _, e := range lab.Etcd() {
			if err := e.Start(); err != nil {
				t.Fatal(err)
			}
		}
		if err := netns.Poll(30*time.Second, func() error {
			if code, body, err := h1.HTTPGet("/readyz"); err != nil || code != 200 || body != "ok\n" {
				return fmt.Errorf("/readyz: %d %q %v", code, body, err)
			}
			return nil
		}); err != nil {
			t.Errorf("after etcd came back: %v, want exactly ok", err)
		}
		if v := value(scrape(t, h1), "vtepd_etcd_watching"); v != 1 {
			t.Errorf("vtepd_etcd_watching = %v with etcd back", v)
		}
	})
}

// waitListening waits until a vtepd monitor has subscribed to misses.
func waitListening(t *testing.T, mon *netns.Process) {
	t.Helper()
	err := netns.Poll(10*time.Second, func() error {
		if exited, err := mon.Exited(); exited {
			return fmt.Errorf("monitor exited: %v\n%s", err, mon.Tail(3))
		}
		if !strings.Contains(mon.Log(), "listening for misses") {
			return errStillThere
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", mon.Name, err)
	}
}

func expectHealth(t *testing.T, h *netns.Host, code int, says string) {
	t.Helper()
	var got int
	var body string
	err := netns.Poll(15*time.Second, func() error {
		var err error
		got, body, err = h.HTTPGet("/readyz")
		if err != nil {
			return err
		}
		if got != code || !strings.Contains(body, says) {
			return errStillThere
		}
		return nil
	})
	if err != nil {
		t.Errorf("/healthz: %d %q, want %d saying %q (%v)", got, body, code, says, err)
	}
}

func scrape(t *testing.T, h *netns.Host) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, err := h.HTTPGet("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// matching returns the family's metric with exactly these label values.
func matching(fams map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	for _, m := range fams[name].GetMetric() {
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			ok = ok && label(m, labels[i]) == labels[i+1]
		}
		if ok {
			return m
		}
	}
	return nil
}

func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	m := matching(fams, name, labels...)
	switch {
	case m == nil:
		return 0
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	default:
		return m.GetGauge().GetValue()
	}
}

func histCount(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	if m := matching(fams, name, labels...); m != nil {
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

func getJSON(t *testing.T, h *netns.Host, path string, v any) {
	t.Helper()
	code, body, err := h.HTTPGet(path)
	if err != nil || code != 200 {
		t.Fatalf("%s: %d %v", path, code, err)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, body)
	}
}

// leaseFor reports whether some lease in etcd holds a.
func leaseFor(t *testing.T, o *overlay, a netip.Addr) bool {
	t.Helper()
	for _, h := range o.hosts {
		if mustSubnet(t, h).Contains(a) {
			return true
		}
	}
	return false
}
