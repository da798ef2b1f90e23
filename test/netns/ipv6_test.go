package netns_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
)

// The IPv6 overlays of the lab tests, end to end with vtepd: the IPv6
// network is fd00:10::/48 (overlay6) in /64s, the IPv4 one, when there is
// one, overlayConfig's 10.5.0.0/16.
// (device6, the IPv6 device's name, is writes_bench_test.go's.)
const (
	// dualStackConfig is flannel's dual-stack config (etcd mode).
	dualStackConfig = `{"Network":"10.5.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`
	// ipv6OnlyConfig has no IPv4 part at all.
	ipv6OnlyConfig = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`
)

// newOverlay6 starts etcd, writes config and brings up n hosts made by
// AddHost6 (an IPv6 address on the underlay if v6Underlay), each with vtepd
// and a container with extra fresh addresses of each family.
func newOverlay6(t *testing.T, name, config string, v6Underlay bool, n, extra int) *overlay {
	t.Helper()
	o := startOverlay(t, name, config)
	for range n {
		o.addHost6(t, v6Underlay, extra)
	}
	return o
}

// addHost6 adds an AddHost6 host with vtepd and a dual container.
func (o *overlay) addHost6(t *testing.T, v6Underlay bool, extra int, vtepdArgs ...string) *netns.Host {
	t.Helper()
	h, err := o.lab.AddHost6(v6Underlay)
	if err != nil {
		t.Fatalf("adding a host: %v", err)
	}
	if _, err := h.StartVtepd(vtepdArgs...); err != nil {
		t.Fatalf("starting vtepd on %s: %v", h.Name, err)
	}
	if _, err := h.AddContainerDual(extra); err != nil {
		t.Fatalf("adding a container on %s: %v", h.Name, err)
	}
	o.hosts = append(o.hosts, h)
	return h
}

// errorLines returns p's log lines at level error.
func errorLines(p *netns.Process) []string {
	var out []string
	for _, line := range strings.Split(p.Log(), "\n") {
		var e netns.LogEntry
		if json.Unmarshal([]byte(line), &e) == nil && e.Str("level") == "error" {
			out = append(out, line)
		}
	}
	return out
}

// leaseOfHost reads h's lease from etcd, whatever its key's form (IPv4,
// v4&v6, 0.0.0.0-0&v6): the one holding the subnets of h's subnet file.
func leaseOfHost(t *testing.T, lab *netns.Lab, h *netns.Host) store.Lease {
	t.Helper()
	env, err := h.Subnet()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range allLeases(t, lab) {
		if env.Subnet.IsValid() && l.Subnet == env.Subnet.Masked() || env.IPv6Subnet.IsValid() && l.IPv6Subnet == env.IPv6Subnet.Masked() {
			return l
		}
	}
	t.Fatalf("no lease in etcd for %s's subnets %s %s", h.Name, env.Subnet, env.IPv6Subnet)
	return store.Lease{}
}

// allLeases reads every lease in etcd that parses.
func allLeases(t *testing.T, lab *netns.Lab) []store.Lease {
	t.Helper()
	c, err := lab.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Get(ctxFor(t, 5*time.Second), store.SubnetsPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Lease
	for _, kv := range resp.Kvs {
		l, err := store.ParseLease(strings.TrimPrefix(string(kv.Key), store.SubnetsPrefix(prefix)), kv.Value)
		if err == nil {
			out = append(out, l)
		}
	}
	return out
}

// mesh pings, from every host's container to every other's, the primary
// address and fresh ones of one family, each once with `ping -c1 -W1`: the
// first packet, which must come back. It records in contacted what each
// host's kernel was asked to send to (the reply path's address on the
// receiver) and returns the round trips.
type mesh struct {
	contacted map[*netns.Host]map[netip.Addr]bool
	rtts      []time.Duration
}

func newMesh() *mesh { return &mesh{contacted: map[*netns.Host]map[netip.Addr]bool{}} }

func (m *mesh) note(h *netns.Host, a netip.Addr) {
	if m.contacted[h] == nil {
		m.contacted[h] = map[netip.Addr]bool{}
	}
	m.contacted[h][a] = true
}

// ping sends one ping -c1 -W1 from from's container to addr on to's, and
// fails t if it is lost.
func (m *mesh) ping(t *testing.T, from, to *netns.Host, addr netip.Addr) {
	t.Helper()
	family := "-4"
	src := from.Container.Addr
	if addr.Is6() {
		family, src = "-6", from.Container.Addr6
	}
	// From the primary address: IPv6 would pick the container's newest
	// (source selection ties on prefix length), and the reply path with it.
	res, err := from.Container.Ping(addr, family, "-c1", "-W1", "-I", src.String())
	if err != nil || res.Received != 1 || len(res.RTTs) != 1 {
		t.Errorf("first ping %s -> %s %s lost (no retry allowed): %v\n%s", from.Name, to.Name, addr, err, res.Output)
		return
	}
	m.rtts = append(m.rtts, res.RTTs[0])
	m.note(from, addr)
	m.note(to, src)
}

// all pings, for every ordered pair of hosts, the receiver's primary address
// of the family and n fresh ones reserved for the sender.
func (m *mesh) all(t *testing.T, hosts []*netns.Host, ipv6 bool, n int) {
	t.Helper()
	for _, from := range hosts {
		for _, to := range hosts {
			if from == to {
				continue
			}
			primary, extra := to.Container.Addr, to.Container.Extra
			if ipv6 {
				primary, extra = to.Container.Addr6, to.Container.Extra6
			}
			i := (from.Index - 1) * n
			for _, a := range append([]netip.Addr{primary}, extra[i:i+n]...) {
				m.ping(t, from, to, a)
			}
		}
	}
}

// checkKernel6 asserts that h's IPv6 device holds PERMANENT neighbour
// entries for exactly the addresses in want, each resolving to its lease's
// IPv6 VTEP MAC; PERMANENT FDB entries for exactly the peers named, each to
// the peer's IPv6 VTEP address in the underlay's family (v6Underlay: IPv6);
// and one route, for the whole IPv6 overlay.
func checkKernel6(t *testing.T, h *netns.Host, want map[netip.Addr]bool, leases map[string]store.Lease, fdbPeers []string, v6Underlay bool) {
	t.Helper()
	k, err := h.Kernel6(device6)
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Addr]bool{}
	for _, n := range k.Neighbours {
		got[n.IP] = true
		var mac store.MAC
		for _, l := range leases {
			if l.IPv6Subnet.Contains(n.IP) {
				mac = l.VtepMACv6
			}
		}
		if n.State&unix.NUD_PERMANENT == 0 || n.MAC.String() != mac.String() {
			t.Errorf("%s: neighbour %s -> %s state %#x, want PERMANENT -> %s", h.Name, n.IP, n.MAC, n.State, mac)
		}
	}
	if diff := setDiff(got, want); diff != "" {
		t.Errorf("%s: IPv6 neighbour entries differ from the addresses contacted: %s", h.Name, diff)
	}
	wantFDB := map[string]bool{}
	for _, p := range fdbPeers {
		part, _ := leases[p].IPv6()
		if part.PublicIP.Is6() != v6Underlay {
			t.Errorf("%s's lease publishes %s as its IPv6 VTEP address; want an IPv6 one: %v", p, part.PublicIP, v6Underlay)
		}
		wantFDB[fmt.Sprintf("%s dst %s", part.VtepMAC, part.PublicIP)] = true
	}
	gotFDB := map[string]bool{}
	for _, f := range k.FDB {
		gotFDB[fmt.Sprintf("%s dst %s", f.MAC, f.Dst)] = true
		if f.State&unix.NUD_PERMANENT == 0 {
			t.Errorf("%s: fdb %s dst %s is %#x, want PERMANENT", h.Name, f.MAC, f.Dst, f.State)
		}
		if f.Dst.Is6() != v6Underlay {
			t.Errorf("%s: fdb %s dst %s: want a destination of the underlay's family (IPv6: %v)", h.Name, f.MAC, f.Dst, v6Underlay)
		}
	}
	if diff := setDiff(gotFDB, wantFDB); diff != "" {
		t.Errorf("%s: IPv6 fdb entries differ from the hosts contacted: %s", h.Name, diff)
	}
	var routes []string
	for _, r := range k.Routes {
		routes = append(routes, r.Dst.String())
	}
	if len(routes) != 1 || routes[0] != overlay6.String() {
		t.Errorf("%s: IPv6 routes through %s: %v, want exactly [%s]", h.Name, device6, routes, overlay6)
	}
}

// TestIPv6Overlays runs IPv6 overlays end to end, three hosts each: dual-
// stack over a dual-stack underlay, IPv6-only over an IPv6 underlay, and
// IPv6-only over the IPv4 underlay (the IPv6 device's VXLAN packets in
// IPv4: vtepd's extension). Every first packet from every container to
// every other host's container, to addresses its host has never resolved,
// is delivered, over IPv6 and, dual-stack, over IPv4; afterwards each
// host's kernel holds the contacted entries alone, PERMANENT, its FDB
// entries to the peers' VTEP addresses in the underlay's family, and one
// overlay route per family.
func TestIPv6Overlays(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, lab, config string
		v6Underlay, ipv4  bool
	}{
		{"dual-stack over a dual-stack underlay", "vt6dual", dualStackConfig, true, true},
		{"IPv6-only over an IPv6 underlay", "vt6only", ipv6OnlyConfig, true, false},
		{"IPv6-only over an IPv4 underlay", "vt6ov4", ipv6OnlyConfig, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const fresh = 3 // per ordered pair
			o := newOverlay6(t, tc.lab, tc.config, tc.v6Underlay, 3, 3*fresh)
			leases := map[string]store.Lease{}
			for _, h := range o.hosts {
				l := leaseOfHost(t, o.lab, h)
				leases[h.Name] = l
				if _, ok := l.IPv4(); ok != tc.ipv4 {
					t.Errorf("%s's lease %s: an IPv4 part %v, want %v", h.Name, l.Key, ok, tc.ipv4)
				}
			}
			m6 := newMesh()
			m6.all(t, o.hosts, true, fresh)
			t.Logf("IPv6: %d first pings, all delivered; median RTT %v", len(m6.rtts), median(m6.rtts))
			m4 := newMesh()
			if tc.ipv4 {
				m4.all(t, o.hosts, false, fresh)
				t.Logf("IPv4: %d first pings, all delivered; median RTT %v", len(m4.rtts), median(m4.rtts))
			}
			for _, h := range o.hosts {
				var peers []string
				for _, p := range o.hosts {
					if p != h {
						peers = append(peers, p.Name)
					}
				}
				if errs := errorLines(h.Vtepd); len(errs) > 0 {
					t.Errorf("vtepd on %s logged errors:\n%s", h.Name, strings.Join(errs, "\n"))
				}
				checkKernel6(t, h, m6.contacted[h], leases, peers, tc.v6Underlay)
				if tc.ipv4 {
					checkKernel(t, h, m4.contacted[h], leases, peers)
				} else if _, err := h.Kernel(device); err == nil {
					t.Errorf("%s has %s in an IPv6-only overlay", h.Name, device)
				}
			}
		})
	}
}
