package netns_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// httpGetIn fetches url with a socket of namespace ns: a client on that
// lab host, with that host's source address.
func httpGetIn(ns, url string) (int, string, error) {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return netns.DialerIn(ns)(ctx, addr) },
		},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestFlanneldUnit starts vtepd exactly as a flanneld unit starts flanneld,
// binary renamed: no command, flanneld's flags in its single-dash style,
// and the rest from flanneld's FLANNELD_* variables, as an environment
// file such as /etc/default/flanneld gives them (VTEPD_LOG_FORMAT=json
// only so that the lab can read the log). It must become ready, and serve
// flannel's probes on flanneld's --healthz-port: /healthz liveness,
// /readyz readiness, with /debug/ for loopback clients only.
func TestFlanneldUnit(t *testing.T) {
	t.Parallel()
	needFirewallTools(t)
	lab := newLab(t, "vtcli")
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	h1, err := lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	h2, err := lab.AddHost() // a client on another host: a scraper, a prober
	if err != nil {
		t.Fatal(err)
	}
	p, err := lab.Start(h1.NS, h1.Name+".vtepd", "env",
		"FLANNELD_ETCD_ENDPOINTS="+strings.Join(lab.Endpoints(), ","),
		"FLANNELD_SUBNET_FILE="+h1.SubnetFile,
		"FLANNELD_IPTABLES_RESYNC=1",
		"FLANNELD_V=4",
		"VTEPD_LOG_FORMAT=json",
		lab.Bin.Vtepd, "-iface", "eth0", "-ip-masq", "-healthz-port", "9742")
	if err != nil {
		t.Fatal(err)
	}
	h1.Vtepd = p
	if err := h1.WaitReady(p, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// What flanneld's flags and variables asked for.
	env, err := h1.Subnet()
	if err != nil {
		t.Fatalf("the subnet file FLANNELD_SUBNET_FILE names: %v", err)
	}
	if !env.IPMasq {
		t.Errorf("subnet file says FLANNEL_IPMASQ=false under -ip-masq")
	}
	// FLANNELD_V=4 is debug, where each miss is logged: one for an overlay
	// address nobody holds.
	if err := netns.Poll(10*time.Second, func() error {
		h1.Exec("ping", "-c1", "-W0.2", "10.5.250.7")
		if len(p.Entries("miss")) == 0 {
			return errStillThere
		}
		return nil
	}); err != nil {
		t.Errorf("FLANNELD_V=4: no miss logged at debug")
	}
	if ready := p.Entries("vtepd ready"); len(ready) != 1 || ready[0].Str("subnet") != env.Subnet.Masked().String() {
		t.Errorf("ready line %v, want one for %s", ready, env.Subnet.Masked())
	}

	// The probes, from this host, on loopback.
	probe := func(path string, code int, says string) error {
		return netns.Poll(15*time.Second, func() error {
			got, body, err := h1.HTTPGet(path)
			if err != nil {
				return err
			}
			if got != code || !strings.Contains(body, says) {
				return fmt.Errorf("%s: %d %q, want %d saying %q", path, got, body, code, says)
			}
			return nil
		})
	}
	for _, c := range []struct {
		path string
		code int
		says string
	}{{"/readyz", 200, "ok\n"}, {"/healthz", 200, "ok\n"}, {"/debug/leases", 200, env.Subnet.Masked().String()}} {
		if err := probe(c.path, c.code, c.says); err != nil {
			t.Error(err)
		}
	}

	// Readiness is not liveness: with the device down vtepd is not ready,
	// but restarting it would not help, so it stays live; then vtepd puts
	// the device back and is ready again.
	if _, err := h1.Exec("ip", "link", "set", device, "down"); err != nil {
		t.Fatal(err)
	}
	if err := probe("/readyz", 503, "device flannel.1 is down"); err != nil {
		if _, err := h1.Exec("ip", "link", "set", device, "up"); err != nil {
			t.Fatal(err)
		}
		t.Error(err)
	} else {
		if code, body, err := h1.HTTPGet("/healthz"); err != nil || code != 200 {
			t.Errorf("/healthz with the device down: %d %q %v, want 200", code, body, err)
		}
		if _, err := h1.Exec("ip", "link", "set", device, "up"); err != nil {
			t.Fatal(err)
		}
	}
	if err := probe("/readyz", 200, "ok\n"); err != nil {
		t.Error(err)
	}

	// From another host, and from this one on its underlay address: the
	// server listens on every address, as flanneld's --healthz-port alone
	// does; metrics and probes answer, /debug/ does not.
	for _, client := range []struct{ who, ns string }{{"h2", h2.NS}, {"h1 on its own eth0 address", h1.NS}} {
		base := "http://" + h1.IP.String() + ":9742"
		for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/status": 200,
			"/debug/leases": 403, "/debug/misses": 403, "/debug/pprof/cmdline": 403} {
			code, body, err := httpGetIn(client.ns, base+path)
			if err != nil || code != want {
				t.Errorf("%s from %s: %d %v, want %d\n%s", path, client.who, code, err, want, netns.Tail(body, 3))
			}
			if path == "/metrics" && !strings.Contains(body, "\nvtepd_ready 1\n") {
				t.Errorf("/metrics from %s does not say vtepd_ready 1", client.who)
			}
			if want == 403 && !strings.Contains(body, "loopback clients only") {
				t.Errorf("%s from %s answered %.80q", path, client.who, body)
			}
		}
	}

	// FLANNELD_IPTABLES_RESYNC=1: the ip-masq table, deleted right after a
	// restore, is back one period later, not flannel's default five.
	masqTable := func() bool {
		_, err := h1.Exec("nft", "list", "table", "ip", "vtepd-nat-flannel.1")
		return err == nil
	}
	restored := func() time.Time {
		t.Helper()
		if _, err := h1.Exec("nft", "delete", "table", "ip", "vtepd-nat-flannel.1"); err != nil {
			t.Fatalf("deleting the ip-masq table: %v", err)
		}
		if err := netns.Poll(10*time.Second, func() error {
			if !masqTable() {
				return errStillThere
			}
			return nil
		}); err != nil {
			t.Fatalf("the ip-masq table was not restored within 10s")
		}
		return time.Now()
	}
	first := restored()
	if period := restored().Sub(first); period > 2500*time.Millisecond {
		t.Errorf("ip-masq rules restored %s after the previous restore, want about 1s (FLANNELD_IPTABLES_RESYNC=1)", period.Round(10*time.Millisecond))
	}

	if err := p.Stop(10 * time.Second); err != nil {
		t.Errorf("vtepd did not stop cleanly: %v", err)
	}
}
