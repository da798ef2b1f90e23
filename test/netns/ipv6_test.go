package netns_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/fabric"
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
			l.Key = string(kv.Key) // ParseLease leaves it to the table
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
	rtts      []time.Duration // of the first pings answered
	sent      int
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
	m.sent++
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
			// For comparison, the same primary addresses again: warm.
			var warm []time.Duration
			for _, from := range o.hosts {
				for _, to := range o.hosts {
					if from == to {
						continue
					}
					if ok, rtt, err := from.Container.Echo(to.Container.Addr6, time.Second); err == nil && ok {
						warm = append(warm, rtt)
					}
				}
			}
			t.Logf("IPv6: %d of %d first pings delivered; median RTT %v (warm, again: %v)", len(m6.rtts), m6.sent, median(m6.rtts), median(warm))
			m4 := newMesh()
			if tc.ipv4 {
				m4.all(t, o.hosts, false, fresh)
				t.Logf("IPv4: %d of %d first pings delivered; median RTT %v", len(m4.rtts), m4.sent, median(m4.rtts))
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

// fake6 is a dual-stack lease for a host that does not exist (fake's, with
// an IPv6 part as a dual-stack flanneld writes it): misses for its addresses
// are answered all the same.
type fake6 struct {
	fake
	Subnet6    netip.Prefix
	PublicIPv6 netip.Addr
	MACv6      store.MAC
}

// newFakes6 returns n fake6 leases on free IPv4 /24s and IPv6 /64s of
// fd00:10:0:ff00::/56 (vtepd picks its own at random from 65534: a clash
// is one in 256 per host, and the IPv6 /64 is checked free too).
func newFakes6(t *testing.T, c *clientv3.Client, n int) []fake6 {
	t.Helper()
	taken := map[netip.Prefix]bool{}
	resp, err := c.Get(ctxFor(t, 10*time.Second), store.SubnetsPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if _, v6, err := store.ParseLeaseKey(strings.TrimPrefix(string(kv.Key), store.SubnetsPrefix(prefix))); err == nil && v6.IsValid() {
			taken[v6] = true
		}
	}
	var out []fake6
	i := 0
	for _, f := range newFakes(t, c, n+len(taken)) {
		if len(out) == n {
			break
		}
		b := byte(f.Subnet.Addr().As4()[2])
		s6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 6: 0xff, 7: b}), 64)
		if taken[s6] {
			continue
		}
		i++
		out = append(out, fake6{fake: f, Subnet6: s6,
			PublicIPv6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 5, 15: b}),
			MACv6:      store.MAC{0x02, 0xfa, 0x46, 0, 0, b}})
	}
	if len(out) < n {
		t.Fatalf("test bug: only %d free dual-stack subnets", len(out))
	}
	return out
}

func (f fake6) Key() string { return store.SubnetsPrefix(prefix) + store.LeaseKey(f.Subnet, f.Subnet6) }

func (f fake6) Value() string {
	return string(store.Lease{Subnet: f.Subnet, PublicIP: f.PublicIP, VtepMAC: f.MAC, VNI: 1,
		IPv6Subnet: f.Subnet6, PublicIPv6: f.PublicIPv6, VtepMACv6: f.MACv6}.Value())
}

// Addr6 returns the IPv6 subnet's n-th address.
func (f fake6) Addr6(n int) netip.Addr {
	a := f.Subnet6.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// shortNeighbourTimers makes h's IPv6 device's answers that age go STALE
// within 0.5-1.5 s and, used, PROBE a second later. Set before the entries
// are: the kernel does not re-arm an entry's timer when these change.
func shortNeighbourTimers(t *testing.T, h *netns.Host) {
	t.Helper()
	for name, v := range map[string]string{"base_reachable_time_ms": "1000", "delay_first_probe_time": "1"} {
		if err := h.Sysctl("net/ipv6/neigh/"+device6+"/"+name, v); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIPv6NeighbourLimit: past --neighbour-limit PERMANENT IPv6 entries,
// answers are REACHABLE; they age, and while used they are re-confirmed
// by PROBE misses (AF_INET6 ones, with the cached MAC) without loss.
func TestIPv6NeighbourLimit(t *testing.T) {
	t.Parallel()
	o := startOverlay(t, "vt6nlim", ipv6OnlyConfig)
	h1 := o.addHost6(t, true, 0, "--neighbour-limit", "3")
	h2 := o.addHost6(t, true, 4)
	shortNeighbourTimers(t, h1)
	agingPastLimit(t, h1, append([]netip.Addr{h2.Container.Addr6}, h2.Container.Extra6...), 2)
}

// TestIPv6LeaseChurn: a dual-stack lease deleted takes its IPv6 entries
// (and its IPv4 ones) off every host within a second; a peer rebuilt with
// a new IPv6 VTEP MAC leaves nothing pointing at the old one, and traffic
// to it over IPv6 comes back.
func TestIPv6LeaseChurn(t *testing.T) {
	t.Parallel()
	o := newOverlay6(t, "vt6churn", dualStackConfig, true, 2, 2)
	h1, h2 := o.hosts[0], o.hosts[1]
	c := etcdClient(t, o.lab)

	t.Run("removed lease", func(t *testing.T) {
		f := newFakes6(t, c, 1)[0]
		put(t, c, f.Key(), f.Value())
		if err := installedFor(t, h1, f.Addr6(5), f.MACv6, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := installedFor(t, h1, f.Addr(5), f.MAC, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		del(t, c, f.Key())
		took, err := goneWithinOn(t, h1, true, f.MACv6, f.Subnet6, 5*time.Second)
		if err != nil || took > time.Second {
			t.Errorf("IPv6 entries of a deleted lease gone after %v (want < 1s): %v", took, err)
		}
		t.Logf("IPv6 entries of a deleted lease gone %v after the delete", took.Round(time.Millisecond))
		if _, err := goneWithinOn(t, h1, false, f.MAC, f.Subnet, time.Second); err != nil {
			t.Errorf("IPv4 entries of the deleted dual-stack lease: %v", err)
		}
	})

	t.Run("new public IPv6", func(t *testing.T) {
		f := newFakes6(t, c, 2)[1]
		put(t, c, f.Key(), f.Value())
		for _, a := range []netip.Addr{f.Addr6(5), f.Addr(5)} {
			if err := installedFor(t, h1, a, map[bool]store.MAC{true: f.MACv6, false: f.MAC}[a.Is6()], 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		moved := f
		moved.PublicIPv6 = netip.MustParseAddr("2001:db8:5::199")
		put(t, c, moved.Key(), moved.Value())
		want := "fdb " + f.MACv6.String() + " dst 2001:db8:5::199"
		err := netns.Poll(time.Second, func() error {
			got := pointingAtOn(t, h1, true, f.MACv6, f.Subnet6)
			for _, e := range got {
				if strings.HasPrefix(e, "fdb") && e != want {
					return errStillThere
				}
			}
			if !slices.Contains(got, want) {
				return errStillThere
			}
			return nil
		})
		if err != nil {
			t.Errorf("IPv6 FDB entry not moved to the new public IPv6 within 1s: %v", pointingAtOn(t, h1, true, f.MACv6, f.Subnet6))
		}
		// The IPv4 part's VTEP did not move: its FDB entry stays.
		if got := pointingAtOn(t, h1, false, f.MAC, f.Subnet); len(got) != 2 || !slices.Contains(got, "fdb "+f.MAC.String()+" dst "+f.PublicIP.String()) {
			t.Errorf("IPv4 entries of the lease whose IPv6 VTEP moved: %v", got)
		}
	})

	t.Run("rebuilt host with a new IPv6 VTEP MAC", func(t *testing.T) {
		old := leaseOfHost(t, o.lab, h2)
		target := h2.Container.Extra6[0]
		firstPing(t, h1, target)
		if got := pointingAtOn(t, h1, true, old.VtepMACv6, old.IPv6Subnet); len(got) < 2 {
			t.Fatalf("test bug: %s holds %v for %s", h1.Name, got, h2.Name)
		}
		flow := startFlow(t, h1, target)
		// The host comes back with the same addresses, a new IPv6 device
		// with a new MAC, and keeps its subnets: the lease changes in place.
		newMAC := "02:be:e1:00:06:02"
		h2.Vtepd.Kill()
		for _, cmd := range [][]string{
			{"ip", "link", "del", device6},
			{"ip", "link", "add", device6, "address", newMAC, "type", "vxlan", "id", "1", "dstport", "8472",
				"local", h2.IP6().String(), "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss"},
			{"ip", "link", "set", device6, "up"},
		} {
			mustExec(t, h2, cmd...)
		}
		if _, err := h2.StartVtepd(); err != nil {
			t.Fatal(err)
		}
		rebuilt := leaseOfHost(t, o.lab, h2)
		if rebuilt.VtepMACv6.String() != newMAC || rebuilt.VtepMAC != old.VtepMAC {
			t.Fatalf("lease after the rebuild says %s (IPv4 %s), want %s (IPv4 unchanged, %s)", rebuilt.VtepMACv6, rebuilt.VtepMAC, newMAC, old.VtepMAC)
		}
		took, err := goneWithinOn(t, h1, true, old.VtepMACv6, netip.Prefix{}, 5*time.Second)
		if err != nil || took > time.Second {
			t.Errorf("IPv6 entries for the old VTEP MAC gone %v after the change (want < 1s): %v", took, err)
		}
		res := stopFlowAfter(t, flow, 50, 10*time.Second)
		t.Logf("rebuild: ping -6 at 100/s lost %d of %d (vtepd restart on the rebuilt host included)", len(res.Lost), res.Sent)
		if res.Received == 0 || len(res.Lost) > 300 {
			t.Errorf("IPv6 traffic to the rebuilt host did not come back: %d of %d received", res.Received, res.Sent)
		}
		firstPing(t, h1, h2.Container.Extra6[1])
		for _, e := range pointingAtOn(t, h1, true, store.MAC{}, old.IPv6Subnet) {
			if !strings.Contains(e, newMAC) {
				t.Errorf("%s still holds %s", h1.Name, e)
			}
		}
	})
}

// TestIPv6BadInput: bad IPv6 parts of leases get a warning naming the key,
// are skipped, and never installed; vtepd runs on.
func TestIPv6BadInput(t *testing.T) {
	t.Parallel()
	o := newOverlay6(t, "vt6bad", dualStackConfig, true, 2, 0)
	h1, h2 := o.hosts[0], o.hosts[1]
	c := etcdClient(t, o.lab)
	fs := newFakes6(t, c, 6)
	peer := leaseOfHost(t, o.lab, h2)
	dual := func(f fake6, publicIPv6, mac6 string) string {
		return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":%s,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q},"BackendV6Data":{"VNI":1,"VtepMAC":%q}}`,
			f.PublicIP, publicIPv6, f.MAC, mac6)
	}
	keyOf := func(f fake6, v6 string) string {
		return store.SubnetsPrefix(prefix) + store.SubnetKey(f.Subnet) + "&" + v6
	}
	bad := []struct {
		name, key, value string
		subnet6          netip.Prefix // where a miss would have gone; zero if none routes there
		says             string
	}{
		{"IPv6 subnet outside IPv6Network", keyOf(fs[0], "fd00:99:0:1::-64"), dual(fs[0], `"2001:db8:5::f0"`, "02:00:00:00:06:01"),
			netip.Prefix{}, "outside the overlay's IPv6Network"},
		{"a v6 key with a v4 value", fs[1].Key(), fs[1].fake.Value(), fs[1].Subnet6, "BackendV6Data"},
		{"IPv4 PublicIPv6", fs[2].Key(), dual(fs[2], `"198.51.100.240"`, "02:00:00:00:06:03"), fs[2].Subnet6, "PublicIPv6"},
		{"multicast IPv6 VTEP MAC", fs[3].Key(), dual(fs[3], `"2001:db8:5::f3"`, "33:33:00:00:00:01"), fs[3].Subnet6, "not a unicast MAC"},
		{"IPv6 part in upper case", keyOf(fs[4], strings.ToUpper(fs[4].Subnet6.Addr().String())+"-64"), dual(fs[4], `"2001:db8:5::f4"`, "02:00:00:00:06:05"),
			netip.Prefix{}, "subnet key"},
		{"overlapping a peer's IPv6 subnet", keyOf(fs[5], peer.IPv6Subnet.Addr().String()+"-80"),
			dual(fs[5], `"2001:db8:5::f5"`, "02:00:00:00:06:06"), netip.Prefix{}, "overlaps " + peer.IPv6Subnet.String()},
	}
	for _, b := range bad {
		put(t, c, b.key, b.value)
	}
	t.Run("each is warned about once, naming the key", func(t *testing.T) {
		for _, b := range bad {
			err := netns.Poll(10*time.Second, func() error {
				if n := warnings(h1, b.key, b.says); n != 1 {
					return fmt.Errorf("%s: %d warnings naming %s and saying %q, want 1", b.name, n, b.key, b.says)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("none is installed", func(t *testing.T) {
		for _, b := range bad {
			if b.subnet6.IsValid() {
				touch(t, h1, b.subnet6.Addr().Next().Next())
			}
		}
		k, err := h1.Kernel6(device6)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range k.Neighbours {
			for _, b := range bad {
				if b.subnet6.IsValid() && b.subnet6.Contains(n.IP) && len(n.MAC) == 6 {
					t.Errorf("%s: neighbour %s -> %s installed", b.name, n.IP, n.MAC)
				}
			}
		}
		for _, fd := range k.FDB {
			t.Errorf("fdb %s dst %s installed; nothing was sent to a good peer yet", fd.MAC, fd.Dst)
		}
		noLease := 0
		for _, e := range h1.Vtepd.Entries("miss") {
			if e.Str("family") == "ipv6" && e.Str("outcome") == "no_lease" {
				noLease++
			}
		}
		if noLease < 3 {
			t.Errorf("%d IPv6 misses logged as no_lease, want one for each bad subnet touched", noLease)
		}
		// The peer whose IPv6 subnet the overlapping lease claimed is
		// still reached through its own lease.
		firstPing(t, h1, h2.Container.Addr6)
		if done, err := h1.Vtepd.Exited(); done {
			t.Errorf("vtepd stopped: %v", err)
		}
	})
}

// TestIPv6Restart: vtepd on dual-stack hosts killed with SIGKILL and
// restarted adopts both devices (the same ifindex: not recreated), keeps
// their entries (reconciled as kept, none fixed or removed), and the flows
// established over both families lose nothing.
func TestIPv6Restart(t *testing.T) {
	t.Parallel()
	o := newOverlay6(t, "vt6restart", dualStackConfig, true, 2, 1)
	h1, h2 := o.hosts[0], o.hosts[1]
	firstPing(t, h1, h2.Container.Addr6)
	firstPing(t, h1, h2.Container.Addr)
	ifindex := func(h *netns.Host) [2]int {
		var out [2]int
		for i, ipv6 := range []bool{false, true} {
			k, err := kernelOn(h, ipv6)
			if err != nil {
				t.Fatal(err)
			}
			out[i] = k.Device.Attrs().Index
		}
		return out
	}
	before := [2][2]int{ifindex(h1), ifindex(h2)}
	flow6 := startFlow(t, h1, h2.Container.Addr6)
	flow4 := startFlow(t, h1, h2.Container.Addr)
	h1.Vtepd.Kill()
	h2.Vtepd.Kill()
	for _, h := range []*netns.Host{h1, h2} {
		if _, err := h.StartVtepd(); err != nil {
			t.Fatal(err)
		}
	}
	res6 := stopFlowAfter(t, flow6, 50, 10*time.Second)
	res4 := stopFlowAfter(t, flow4, 50, 10*time.Second)
	t.Logf("across kill -9 and restart of both vtepds at 100/s: IPv6 %d of %d lost, IPv4 %d of %d", len(res6.Lost), res6.Sent, len(res4.Lost), res4.Sent)
	if len(res6.Lost) > 0 || len(res4.Lost) > 0 {
		t.Errorf("flows across the restart: IPv6 lost %v, IPv4 lost %v; want no loss", res6.Lost, res4.Lost)
	}
	if after := [2][2]int{ifindex(h1), ifindex(h2)}; after != before {
		t.Errorf("device ifindexes (flannel.1, flannel-v6.1) of h1, h2: %v before, %v after the restart: recreated, not adopted", before, after)
	}
	for _, h := range []*netns.Host{h1, h2} {
		if n := len(h.Vtepd.Entries("adopted existing VXLAN device")); n != 2 {
			t.Errorf("%s: %d devices adopted, want 2", h.Name, n)
		}
		rec := map[string]netns.LogEntry{}
		for _, e := range h.Vtepd.Entries("device entries reconciled") {
			rec[e.Str("device")] = e
		}
		for _, dev := range []string{device, device6} {
			e, ok := rec[dev]
			if !ok {
				t.Errorf("%s: no reconciliation of %s after the restart", h.Name, dev)
				continue
			}
			t.Logf("%s %s after the restart: kept %v fixed %v removed %v answered %v", h.Name, dev, e["kept"], e["fixed"], e["removed"], e["answered"])
			// The overlay route, the peer's FDB entry, the neighbour of
			// the address the flow went to (or came from).
			if logInt(t, e, "kept") < 3 || logInt(t, e, "fixed") != 0 || logInt(t, e, "removed") != 0 {
				t.Errorf("%s: reconciliation of %s %v: want the route, FDB and neighbour entries kept, none fixed or removed", h.Name, dev, e)
			}
		}
	}
}

// TestIPv6MixedOverlay: vtepd hosts and hosts set up as a dual-stack
// flanneld sets them up (FlannelHost6: key v4&v6, PublicIPv6,
// BackendV6Data with the IPv6 device's MAC, static IPv6 entries) share one
// dual-stack overlay: traffic both ways over both families, every first
// packet delivered; vtepd answers misses for the flannel hosts' IPv6
// parts, the flannel hosts ask for nothing. Then one flannel host moves to
// vtepd: both devices recreated with the MACs its lease publishes, the
// lease unchanged, and traffic over IPv6 to and from it goes on.
func TestIPv6MixedOverlay(t *testing.T) {
	t.Parallel()
	claimNeighbours(t, 48) // four hosts' containers pinging each other over IPv4 too
	o := startOverlay(t, "vt6mix", dualStackConfig)
	network := netip.MustParsePrefix(overlayPrefix)
	addFlannel := func(n byte) *netns.FlannelHost6 {
		t.Helper()
		f, err := o.lab.AddFlannelHost6(ctxFor(t, 10*time.Second), network, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, n, 0}), 24),
			overlay6, netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 7: n}), 64))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	f1 := addFlannel(200)
	v1, v2 := o.addHost6(t, true, 4), o.addHost6(t, true, 4)
	f2 := addFlannel(201)
	for _, f := range []*netns.FlannelHost6{f1, f2} {
		n, err := f.Sync(ctxFor(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Fatalf("%s wrote IPv6 entries for %d leases, want 3 (two vtepd hosts, the other flannel host)", f.Name, n)
		}
		if _, err := f.AddContainerDual(4); err != nil {
			t.Fatal(err)
		}
	}
	pairs := []struct {
		from, to *netns.Host
		extra    int
	}{
		{v1, f1.Host, 0}, {f1.Host, v1, 0},
		{v2, f2.Host, 0}, {f2.Host, v2, 0},
		{v1, f2.Host, 1}, {f2.Host, v1, 1},
		{f1.Host, f2.Host, 1}, {v1, v2, 2},
	}
	for _, p := range pairs {
		firstPing(t, p.from, p.to.Container.Extra6[p.extra])
		firstPing(t, p.from, p.to.Container.Extra[p.extra])
	}
	for _, f := range []*netns.FlannelHost6{f1, f2} {
		k, err := f.Kernel6(device6)
		if err != nil {
			t.Fatal(err)
		}
		if len(k.Neighbours) != 3 || len(k.FDB) != 3 || len(k.Routes) != 3 {
			t.Errorf("%s holds %d IPv6 neighbour, %d FDB entries and %d routes, want flanneld's 3, 3 and 3: it asked for nothing",
				f.Name, len(k.Neighbours), len(k.FDB), len(k.Routes))
		}
	}
	answered := 0
	for _, e := range v1.Vtepd.Entries("miss") {
		if e.Str("ip") == f1.Container.Extra6[0].String() && e.Str("outcome") == "answered" && e.Str("vtep") == f1.IP6().String() &&
			e.Str("vtep_mac") == f1.MACv6.String() {
			answered++
		}
	}
	if answered != 1 {
		t.Errorf("v1 answered %d misses for f1's container address with f1's IPv6 VTEP, want 1", answered)
	}

	// f2 moves from flanneld to vtepd.
	before := leaseOfHost(t, o.lab, f2.Host)
	if _, err := f2.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	if n := len(f2.Vtepd.Entries("existing device is incompatible; recreating it")); n != 2 {
		t.Errorf("vtepd on the flannel host logged %d device recreations, want 2", n)
	}
	after := leaseOfHost(t, o.lab, f2.Host)
	if after.Key != before.Key || !after.SameTarget(before) {
		t.Errorf("migration changed the lease: %v -> %v", before, after)
	}
	for _, p := range []struct {
		from, to *netns.Host
		extra    int
	}{
		{f1.Host, f2.Host, 2}, // flannel's static entries for f2, untouched
		{v1, f2.Host, 1},      // v1's answered entries for f2, kept
		{f2.Host, v2, 3},      // f2 now asks vtepd
		{f2.Host, f1.Host, 3},
	} {
		firstPing(t, p.from, p.to.Container.Extra6[p.extra])
	}
}

// TestGoingDualStack: a running IPv4 overlay made dual-stack (the config
// gains EnableIPv6 and IPv6Network; each vtepd restarted, one after the
// other, as an operator rolls the change out): every lease's key becomes
// v4&v6 with the same IPv4 subnet, the IPv4 devices and their entries are
// kept, an IPv4 flow across the roll-out loses nothing, and the hosts
// reach each other over IPv6 afterwards, first packet included.
func TestGoingDualStack(t *testing.T) {
	t.Parallel()
	o := startOverlay(t, "vt6roll", overlayConfig)
	h1, h2 := o.addHost6(t, true, 0), o.addHost6(t, true, 0)
	before := map[*netns.Host]store.Lease{h1: leaseOfHost(t, o.lab, h1), h2: leaseOfHost(t, o.lab, h2)}
	firstPing(t, h1, h2.Container.Addr)
	flow := startFlow(t, h1, h2.Container.Addr)
	put(t, etcdClient(t, o.lab), prefix+"/config", dualStackConfig)
	for _, h := range []*netns.Host{h2, h1} {
		if err := h.Vtepd.Stop(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := h.StartVtepd(); err != nil {
			t.Fatal(err)
		}
	}
	res := stopFlowAfter(t, flow, 50, 10*time.Second)
	t.Logf("IPv4 flow across the roll-out at 100/s: %d of %d lost", len(res.Lost), res.Sent)
	if len(res.Lost) > 0 {
		t.Errorf("IPv4 flow across the roll-out to dual-stack: lost %v of %d; want no loss", res.Lost, res.Sent)
	}
	for _, h := range o.hosts {
		l := leaseOfHost(t, o.lab, h)
		if want := store.SubnetsPrefix(prefix) + store.LeaseKey(before[h].Subnet, l.IPv6Subnet); l.Key != want || !l.IPv6Subnet.IsValid() {
			t.Errorf("%s's lease after the roll-out: %s, want %s (the IPv4 subnet kept, an IPv6 one added)", h.Name, l.Key, want)
		}
		for _, e := range h.Vtepd.Entries("device entries reconciled") {
			if e.Str("device") == device && (logInt(t, e, "kept") < 3 || logInt(t, e, "fixed")+logInt(t, e, "removed") > 0) {
				t.Errorf("%s: %s's entries across the roll-out: %v, want the route, FDB and neighbour kept", h.Name, device, e)
			}
		}
		if err := h.Container.AddIPv6(); err != nil {
			t.Fatal(err)
		}
	}
	firstPing(t, h1, h2.Container.Addr6)
	firstPing(t, h2, h1.Container.Addr6)
}

// TestIPv6HostAnswerMode: --answer=host on a dual-stack overlay over the
// IPv6 underlay. Nothing is routed to a peer before it is talked to; the
// first miss for a peer's IPv6 address installs a route for its whole IPv6
// subnet via the subnet's first address, and every later address of that
// peer is reached, first packet included, through that one neighbour entry
// (the first miss's own address has its entry too)
// (the IPv4 part the same, on its own device). When the lease goes, its
// routes and entries of both families go with it.
func TestIPv6HostAnswerMode(t *testing.T) {
	t.Parallel()
	o := startOverlay(t, "vt6host", dualStackConfig)
	h1 := o.addHost6(t, true, 0, "--answer", "host")
	const fresh = 6
	h2 := o.addHost6(t, true, fresh)
	peer := leaseOfHost(t, o.lab, h2)
	part6, _ := peer.IPv6()
	routes := map[bool]string{
		true:  fabric.Route{Dst: part6.Subnet, Via: part6.Gateway()}.String(),
		false: fabric.Route{Dst: peer.Subnet, Via: peer.Gateway()}.String(),
	}
	for ipv6, want := range routes {
		if k, err := kernelOn(h1, ipv6); err != nil || hasRoute(k, want) {
			t.Fatalf("%s routes %s before any packet went there (%v)", h1.Name, want, err)
		}
	}

	for _, ipv6 := range []bool{true, false} {
		family, primary, extra, subnet := "IPv4", h2.Container.Addr, h2.Container.Extra, peer.Subnet
		if ipv6 {
			family, primary, extra, subnet = "IPv6", h2.Container.Addr6, h2.Container.Extra6, part6.Subnet
		}
		for _, a := range append([]netip.Addr{primary}, extra...) {
			firstPing(t, h1, a)
		}
		k, err := kernelOn(h1, ipv6)
		if err != nil {
			t.Fatal(err)
		}
		if !hasRoute(k, routes[ipv6]) {
			t.Errorf("%s: no route %s on %s after the first miss: %v", family, routes[ipv6], h1.Name, routeStrings(k))
		}
		var inSubnet []netip.Addr
		for _, n := range k.Neighbours {
			if subnet.Contains(n.IP) {
				inSubnet = append(inSubnet, n.IP)
			}
		}
		// The first miss's own address is answered too (its packet is
		// queued on that neighbour entry); none of the later ones is.
		slices.SortFunc(inSubnet, netip.Addr.Compare)
		if want := []netip.Addr{subnet.Addr(), primary}; !slices.Equal(inSubnet, want) {
			t.Errorf("%s: %d addresses of %s pinged; %s holds neighbours %v in it, want only %v (the gateway, the first miss's)",
				family, fresh+1, subnet, h1.Name, inSubnet, want)
		}
	}

	// A lease that goes takes its routes along, of both families.
	c := etcdClient(t, o.lab)
	f := newFakes6(t, c, 1)[0]
	put(t, c, f.Key(), f.Value())
	fakeRoutes := map[bool]string{
		true:  fabric.Route{Dst: f.Subnet6, Via: f.Subnet6.Addr()}.String(),
		false: fabric.Route{Dst: f.Subnet, Via: f.Subnet.Addr()}.String(),
	}
	for ipv6, want := range fakeRoutes {
		a := f.Addr(5)
		if ipv6 {
			a = f.Addr6(5)
		}
		err := netns.Poll(10*time.Second, func() error {
			k, err := kernelOn(h1, ipv6)
			if err == nil && !hasRoute(k, want) {
				touch(t, h1, a)
				err = fmt.Errorf("no route %s", want)
			}
			return err
		})
		if err != nil {
			t.Fatalf("after a miss for %s: %v", a, err)
		}
	}
	del(t, c, f.Key())
	for ipv6, want := range fakeRoutes {
		err := netns.Poll(5*time.Second, func() error {
			k, err := kernelOn(h1, ipv6)
			if err == nil && hasRoute(k, want) {
				err = fmt.Errorf("route %s still there", want)
			}
			return err
		})
		if err != nil {
			t.Errorf("deleted lease: %v", err)
		}
	}
	if _, err := goneWithinOn(t, h1, true, f.MACv6, f.Subnet6, 5*time.Second); err != nil {
		t.Errorf("deleted lease's IPv6 entries: %v", err)
	}
	if _, err := goneWithinOn(t, h1, false, f.MAC, f.Subnet, 5*time.Second); err != nil {
		t.Errorf("deleted lease's IPv4 entries: %v", err)
	}
}
