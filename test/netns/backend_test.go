package netns_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vtepd/vtepd/test/netns"
)

// The vxlan backend's options (issue 17 item 1), end to end: a network
// config with Backend.MTU, DirectRouting, GBP and Learning, vtepd hosts
// and flanneld-style ones, real kernel, real etcd.

// backendConfig is overlayConfig with more Backend fields, e.g.
// `"MTU":1400`.
func backendConfig(fields string) string {
	return `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan",` + fields + `}}`
}

// otherSegment is the second underlay subnet of the tests that need a peer
// DirectRouting does not reach: routed to UnderlayNet by the underlay
// namespace.
var otherSegment = netip.MustParsePrefix("203.0.113.128/25")

// newBackendLab starts etcd and writes a config with the given Backend
// fields.
func newBackendLab(t *testing.T, name, fields string) *overlay {
	t.Helper()
	l := newLab(t, name)
	if _, err := l.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := l.PutNetworkConfig(ctxFor(t, 10*time.Second), backendConfig(fields)); err != nil {
		t.Fatal(err)
	}
	return &overlay{lab: l}
}

// addFarHost adds a vtepd host on segment s (with address addr), which
// the hosts of the first subnet reach through the underlay's router.
func (o *overlay) addFarHost(t *testing.T, s *netns.Segment, addr netip.Addr, extra int) *netns.Host {
	t.Helper()
	h, err := o.lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.MoveTo(s, addr); err != nil {
		t.Fatal(err)
	}
	if _, err := h.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.AddContainer(extra); err != nil {
		t.Fatal(err)
	}
	o.hosts = append(o.hosts, h)
	return h
}

// newMixedOverlay starts an overlay with "MTU":1400 and
// "DirectRouting":true: a flanneld-style host with those options (subnet
// 10.5.200.0/24, synced), a vtepd host on its subnet (near) and one behind
// the underlay's router (far), each with a container of extra fresh
// addresses, the flanneld-style host's with twice as many.
func newMixedOverlay(t *testing.T, name string, extra int) (o *overlay, f *netns.FlannelHost, near, far *netns.Host) {
	t.Helper()
	o = newBackendLab(t, name, `"MTU":1400,"DirectRouting":true`)
	f, err := o.lab.AddFlannelHostWith(ctxFor(t, 10*time.Second), netip.MustParsePrefix(overlayPrefix),
		netip.MustParsePrefix("10.5.200.0/24"), netns.FlannelOptions{MTU: 1400, DirectRouting: true})
	if err != nil {
		t.Fatal(err)
	}
	near = o.addHost(t, extra)
	seg, err := o.lab.AddSegment("br1", otherSegment)
	if err != nil {
		t.Fatal(err)
	}
	far = o.addFarHost(t, seg, netip.MustParseAddr("203.0.113.140"), extra)
	if n, err := f.Sync(ctxFor(t, 10*time.Second)); err != nil || n != 2 {
		t.Fatalf("the flannel host wrote entries for %d leases (%v), want 2", n, err)
	}
	if _, err := f.AddContainer(2 * extra); err != nil {
		t.Fatal(err)
	}
	return o, f, near, far
}

// routesTo lists h's routes to exactly dst as `ip route show dst` would.
func routesTo(t *testing.T, h *netns.Host, dst netip.Prefix) []string {
	t.Helper()
	rs, err := h.RouteTo(dst)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, r := range rs {
		out = append(out, h.Describe(r))
	}
	return out
}

// waitRoutes polls until h's routes to dst are want (none if empty).
func waitRoutes(t *testing.T, h *netns.Host, dst netip.Prefix, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	var got []string
	err := netns.Poll(5*time.Second, func() error {
		if got = routesTo(t, h, dst); !slices.Equal(got, want) {
			return fmt.Errorf("routes %v", got)
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: routes to %s are %q, want %q", h.Name, dst, got, want)
	}
}

// directRoute is `ip route show` of flannel's direct route to subnet via
// peer.
func directRoute(subnet netip.Prefix, peer netip.Addr) string {
	return fmt.Sprintf("%s via %s dev eth0", subnet, peer)
}

// vxlanDevice reads h's flannel.1.
func vxlanDevice(t *testing.T, h *netns.Host) *netlink.Vxlan {
	t.Helper()
	k, err := h.Kernel(device)
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := k.Device.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s on %s is a %s", device, h.Name, k.Device.Type())
	}
	return vx
}

// dfPing pings addr once with DF set and size bytes of payload from the
// container of h (or, fromHost, from h itself), and returns whether the
// reply came within wait and ping's output. (ping waits out its -W even
// after a local error: a ping expected to be refused is given little.)
func dfPing(t *testing.T, h *netns.Host, fromHost bool, addr netip.Addr, size int, wait time.Duration) (bool, string) {
	t.Helper()
	args := []string{"ping", "-n", "-c1", fmt.Sprintf("-W%g", wait.Seconds()), "-M", "do", "-s", fmt.Sprint(size), addr.String()}
	exec := h.Exec
	if !fromHost {
		exec = h.Container.Exec
	}
	out, err := exec(args...)
	return err == nil && strings.Contains(out, " 1 received"), out
}

// TestBackendMTU: "Backend":{"MTU":1400}, an underlay whose path MTU is
// 1400 (the hosts' underlay ports drop larger packets without a word, as
// a tunnel underneath would; eth0 says 1500): the device's MTU is 1350,
// FLANNEL_MTU=1350, the largest DF ping that fits crosses between
// containers and one byte more is refused at the sender, by the
// container's link and by the device itself; a restarted vtepd adopts the
// device with its MTU, and one left with another MTU is corrected in
// place.
func TestBackendMTU(t *testing.T) {
	t.Parallel()
	o := newBackendLab(t, "vtmtu", `"MTU":1400`)
	h1, h2 := o.addHost(t, 0), o.addHost(t, 0)
	for _, h := range o.hosts {
		if err := h.SetPortMTU(1400); err != nil {
			t.Fatal(err)
		}
	}
	const mtu = 1350      // 1400 less VXLAN's 50
	const fits = mtu - 28 // less the ICMP and IP headers
	check := func(when string) {
		t.Helper()
		for _, h := range o.hosts {
			if got := vxlanDevice(t, h).MTU; got != mtu {
				t.Errorf("%s: %s's MTU %d on %s, want %d (Backend.MTU 1400 less 50)", when, device, got, h.Name, mtu)
			}
			if env, err := h.Subnet(); err != nil || env.MTU != mtu {
				t.Errorf("%s: FLANNEL_MTU on %s is %d (%v), want %d", when, h.Name, env.MTU, err, mtu)
			}
		}
		for _, p := range [][2]*netns.Host{{h1, h2}, {h2, h1}} {
			from, to := p[0], p[1].Container.Addr
			if ok, out := dfPing(t, from, false, to, fits, time.Second); !ok {
				t.Errorf("%s: DF ping of %d bytes %s -> %s lost:\n%s", when, fits, from.Name, to, out)
			}
			// One byte more: refused where it is sent, never black-holed
			// in the underlay.
			for _, fromHost := range []bool{false, true} {
				if ok, out := dfPing(t, from, fromHost, to, fits+1, 100*time.Millisecond); ok || !strings.Contains(out, fmt.Sprintf("mtu=%d", mtu)) {
					t.Errorf("%s: DF ping of %d bytes from %s (host: %v) -> %s not refused for mtu=%d:\n%s", when, fits+1, from.Name, fromHost, to, mtu, out)
				}
			}
		}
	}
	check("first start")

	// Restarted: the device is adopted, MTU and all.
	index := vxlanDevice(t, h1).Index
	if err := h1.Vtepd.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := h1.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	if n := len(h1.Vtepd.Entries("adopted existing VXLAN device")); n != 1 || vxlanDevice(t, h1).Index != index {
		t.Errorf("restarted vtepd: %d adoptions, device index %d (was %d): want the same device adopted", n, vxlanDevice(t, h1).Index, index)
	}
	check("adopted")

	// A device left with another MTU (by a run before Backend.MTU was
	// set): corrected in place, not recreated.
	if err := h1.Vtepd.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	mustExec(t, h1, "ip", "link", "set", device, "mtu", "1450")
	if _, err := h1.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	if got := vxlanDevice(t, h1).Index; got != index {
		t.Errorf("the device with MTU 1450 was recreated (index %d, was %d), want its MTU corrected in place", got, index)
	}
	check("MTU corrected")
}

// TestDirectRouting: "DirectRouting":true. Hosts on the lab's underlay
// subnet reach each other's containers by a route via the peer's public
// IP on eth0, installed on the first miss towards that peer and not
// before, the first packet delivered (through VXLAN) both ways, under a
// strict reverse-path filter too, every later one unencapsulated; the
// route goes with the peer's lease and follows its public IP, and comes
// back after the underlay interface went down and up; a peer on another
// subnet (behind the underlay's router) is reached through VXLAN, without
// a direct route.
func TestDirectRouting(t *testing.T) {
	t.Parallel()
	o := newBackendLab(t, "vtdirect", `"DirectRouting":true`)
	// Strict reverse-path filtering, as RHEL and its kin have it by
	// default: the first packet each way comes through flannel.1 while the
	// route back to its sender is already the direct one on eth0.
	strict := func() *netns.Host {
		h, err := o.lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Sysctl("net.ipv4.conf.all.rp_filter", "1"); err != nil {
			t.Fatal(err)
		}
		if _, err := h.StartVtepd(); err != nil {
			t.Fatal(err)
		}
		if _, err := h.AddContainer(2); err != nil {
			t.Fatal(err)
		}
		o.hosts = append(o.hosts, h)
		return h
	}
	h1, h2, h3 := strict(), strict(), strict()
	seg, err := o.lab.AddSegment("br1", otherSegment)
	if err != nil {
		t.Fatal(err)
	}
	far := o.addFarHost(t, seg, netip.MustParseAddr("203.0.113.140"), 2)
	s1, s2, s3, sFar := mustSubnet(t, h1), mustSubnet(t, h2), mustSubnet(t, h3), mustSubnet(t, far)
	// What vtepd cannot loosen itself: the underlay's filter, which drops
	// a peer's direct packets while this host has no route back to it.
	if n := countLog(h1, "DirectRouting with strict reverse-path filtering on the underlay interface: a peer's direct packets are dropped until this host has sent to that peer; set it to 2 (loose)",
		"sysctl", "net.ipv4.conf.eth0.rp_filter"); n != 1 {
		t.Errorf("h1 warned %d times of eth0's strict reverse-path filter, want once", n)
	}

	// Nothing is routed to a peer before anything is sent to it.
	for _, s := range []netip.Prefix{s2, s3, sFar} {
		if got := routesTo(t, h1, s); len(got) > 0 {
			t.Errorf("h1 routes %s before any packet went there: %q", s, got)
		}
	}

	// h1 -> h2: the first packet goes through VXLAN, released by the
	// miss's answer; the answer routes h2's subnet directly, and h2's
	// reply, its first packet to h1, does the same for h1's subnet.
	firstPing(t, h1, h2.Container.Extra[0])
	waitRoutes(t, h1, s2, directRoute(s2, h2.IP))
	waitRoutes(t, h2, s1, directRoute(s1, h1.IP))
	waitRoutes(t, h1, s3) // never talked to
	// The other way round: h3 sends first.
	firstPing(t, h3, h1.Container.Extra[0])
	waitRoutes(t, h3, s1, directRoute(s1, h1.IP))
	waitRoutes(t, h1, s3, directRoute(s3, h3.IP))

	// Later packets are not encapsulated: flannel.1 sends none of them,
	// on either side, while eth0 carries them all.
	const pings = 20
	unencapsulated := func(from, to *netns.Host, addr netip.Addr) (vxlan, under [2]uint64) {
		t.Helper()
		var before [2][2]uint64
		for i, h := range []*netns.Host{from, to} {
			before[i] = [2]uint64{txPackets(t, h, device), txPackets(t, h, "eth0")}
		}
		for range pings {
			if ok, _, err := from.Container.Echo(addr, time.Second); err != nil || !ok {
				t.Fatalf("ping %s -> %s lost: %v", from.Name, addr, err)
			}
		}
		for i, h := range []*netns.Host{from, to} {
			vxlan[i] = txPackets(t, h, device) - before[i][0]
			under[i] = txPackets(t, h, "eth0") - before[i][1]
		}
		return vxlan, under
	}
	vx, under := unencapsulated(h1, h2, h2.Container.Addr)
	if vx != [2]uint64{0, 0} || under[0] < pings || under[1] < pings {
		t.Errorf("%d pings h1 -> h2: %s sent %v (h1, h2), eth0 %v; want none through %s and every one on eth0", pings, device, vx, under, device)
	}

	// h1's eth0 goes down and up (its network manager puts the default
	// route back): the kernel dropped the direct routes on it, without a
	// word; vtepd puts its own back. (Without them h2's direct replies
	// would meet a route back through flannel.1, which the strict filter
	// drops.)
	mustExec(t, h1, "ip", "link", "set", "eth0", "down")
	mustExec(t, h1, "ip", "link", "set", "eth0", "up")
	mustExec(t, h1, "ip", "route", "replace", "default", "via", netns.UnderlayBridge.String())
	waitRoutes(t, h1, s2, directRoute(s2, h2.IP))
	waitRoutes(t, h1, s3, directRoute(s3, h3.IP))
	if ok, _, err := h1.Container.Echo(h2.Container.Addr, time.Second); err != nil || !ok {
		t.Errorf("ping h1 -> h2 after h1's eth0 went down and up lost: %v", err)
	}

	// The far host: through VXLAN both ways, first packets included, no
	// direct route on either side; flannel.1 carries its traffic (which
	// shows the counters above count what they should).
	firstPing(t, h1, far.Container.Extra[0])
	firstPing(t, far, h2.Container.Extra[1])
	vx, _ = unencapsulated(h1, far, far.Container.Addr)
	if vx[0] < pings || vx[1] < pings {
		t.Errorf("%d pings h1 -> far host: %s sent %v (h1, far), want every one", pings, device, vx)
	}
	waitRoutes(t, h1, sFar)
	waitRoutes(t, far, s1)
	waitRoutes(t, far, s2)
	if got := pointingAt(t, h1, leaseOf(t, o, sFar).VtepMAC, sFar); !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "fdb ") && strings.HasSuffix(s, far.IP.String()) }) {
		t.Errorf("h1 holds %q for the far host, want its FDB entry to %s", got, far.IP)
	}

	// The peer's lease goes (h3 stopped, its lease expired): so does the
	// route to its subnet.
	if err := h3.Vtepd.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	c := etcdClient(t, o.lab)
	del(t, c, leaseKey(s3))
	waitRoutes(t, h1, s3)

	// A peer whose public IP changes (a lease rewritten with another; a
	// lease of a host that does not exist, which keeps the test off real
	// hosts' renewals): the route follows it on the same subnet, and goes
	// when the new IP is on another one (VXLAN then).
	peer := newFakes(t, c, 1)[0]
	put(t, c, peer.Key(), peer.Value())
	if err := netns.Poll(5*time.Second, func() error {
		touch(t, h1, peer.Addr(2))
		if len(routesTo(t, h1, peer.Subnet)) == 0 {
			return fmt.Errorf("no route")
		}
		return nil
	}); err != nil {
		t.Errorf("no direct route to the fake peer's subnet after a miss: %v", err)
	}
	waitRoutes(t, h1, peer.Subnet, directRoute(peer.Subnet, peer.PublicIP))
	moved := peer
	moved.PublicIP = netip.MustParseAddr("198.51.100.251")
	put(t, c, moved.Key(), moved.Value())
	waitRoutes(t, h1, peer.Subnet, directRoute(peer.Subnet, moved.PublicIP))
	away := peer
	away.PublicIP = netip.MustParseAddr("203.0.113.251")
	put(t, c, away.Key(), away.Value())
	waitRoutes(t, h1, peer.Subnet)
	if err := netns.Poll(5*time.Second, func() error {
		for _, s := range pointingAt(t, h1, peer.MAC, peer.Subnet) {
			if s == fmt.Sprintf("fdb %s dst %s", peer.MAC, away.PublicIP) {
				return nil
			}
		}
		return fmt.Errorf("no FDB entry to %s", away.PublicIP)
	}); err != nil {
		t.Errorf("the peer moved off the subnet: %v (h1 holds %q)", err, pointingAt(t, h1, peer.MAC, peer.Subnet))
	}
}

// txPackets is a link's transmitted packet count on h.
func txPackets(t *testing.T, h *netns.Host, link string) uint64 {
	t.Helper()
	st, err := h.LinkStats(link)
	if err != nil {
		t.Fatal(err)
	}
	return st.TxPackets
}

// TestFlannelDirectRouting: a flanneld-style host with DirectRouting and
// MTU 1400 (direct routes for peers on its subnet, VXLAN entries for the
// rest, devices at 1350) beside a vtepd host on its subnet and one behind
// the underlay's router: traffic both ways with each, first packets
// included, the full MTU across, and the vtepd host's later packets to it
// unencapsulated.
func TestFlannelDirectRouting(t *testing.T) {
	t.Parallel()
	o, f, v, far := newMixedOverlay(t, "vtfldr", 2)
	sv, sFar := mustSubnet(t, v), mustSubnet(t, far)
	// What flanneld programs: a direct route for the peer on its subnet,
	// nothing on flannel.1 for it; VXLAN entries for the other.
	waitRoutes(t, f.Host, sv, directRoute(sv, v.IP))
	waitRoutes(t, f.Host, sFar, fmt.Sprintf("%s via %s dev %s onlink", sFar, sFar.Addr(), device))
	if got := pointingAt(t, f.Host, leaseOf(t, o, sv).VtepMAC, sv); len(got) > 0 {
		t.Errorf("the flannel host holds VXLAN entries for its direct peer: %q", got)
	}
	if got := vxlanDevice(t, f.Host).MTU; got != 1350 {
		t.Errorf("the flannel host's %s has MTU %d, want 1350", device, got)
	}
	for _, h := range []*netns.Host{f.Host, v, far} {
		if env, err := h.Subnet(); err != nil || env.MTU != 1350 {
			t.Errorf("FLANNEL_MTU on %s is %d (%v), want 1350", h.Name, env.MTU, err)
		}
	}

	// The flannel host sends first to the vtepd host on its subnet: its
	// packet arrives unencapsulated, and the reply is vtepd's first packet
	// to it (through VXLAN, with the direct route installed). Then the
	// vtepd host sends first, to a fresh address.
	firstPing(t, f.Host, v.Container.Extra[0])
	waitRoutes(t, v, f.Subnet, directRoute(f.Subnet, f.IP))
	firstPing(t, v, f.Container.Extra[0])
	// The far host's way is VXLAN, both ways, first packets included.
	firstPing(t, far, f.Container.Extra[1])
	firstPing(t, f.Host, far.Container.Extra[0])
	waitRoutes(t, far, f.Subnet)
	for _, p := range [][2]*netns.Host{{v, f.Host}, {f.Host, v}, {far, f.Host}, {f.Host, far}} {
		if ok, out := dfPing(t, p[0], false, p[1].Container.Addr, 1350-28, time.Second); !ok {
			t.Errorf("DF ping of %d bytes %s -> %s lost:\n%s", 1350-28, p[0].Name, p[1].Name, out)
		}
	}

	// The vtepd host's later packets to the flannel host are not
	// encapsulated.
	before := txPackets(t, v, device)
	for range 20 {
		if ok, _, err := v.Container.Echo(f.Container.Addr, time.Second); err != nil || !ok {
			t.Fatalf("ping v -> flannel host lost: %v", err)
		}
	}
	if n := txPackets(t, v, device) - before; n != 0 {
		t.Errorf("the vtepd host sent %d of 20 pings to the flannel host through %s, want none", n, device)
	}
}

// TestGBPLearning: "GBP":true,"Learning":true: devices with both flags,
// read back through netlink; a vtepd host finding a device without them
// (left by a run before the config had them) recreates it, naming both
// differences, with the MAC its lease publishes; traffic both ways.
func TestGBPLearning(t *testing.T) {
	t.Parallel()
	o := newBackendLab(t, "vtgbp", `"GBP":true,"Learning":true`)
	h1 := o.addHost(t, 2)
	h2, err := o.lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	const mac = "02:11:22:33:44:56"
	mustExec(t, h2, "ip", "link", "add", device, "address", mac, "type", "vxlan", "id", "1", "dstport", "8472",
		"local", h2.IP.String(), "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss")
	if _, err := h2.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.AddContainer(2); err != nil {
		t.Fatal(err)
	}
	warns := h2.Vtepd.Entries("existing device is incompatible; recreating it")
	if len(warns) != 1 {
		t.Fatalf("%d warnings about the device without GBP and Learning, want 1", len(warns))
	}
	diffs := strings.Join(toStrings(warns[0]["differences"]), "; ")
	for _, want := range []string{"learning false, want true", "gbp false, want true"} {
		if !strings.Contains(diffs, want) {
			t.Errorf("the warning's differences %q do not name %q", diffs, want)
		}
	}
	for _, h := range []*netns.Host{h1, h2} {
		if vx := vxlanDevice(t, h); !vx.GBP || !vx.Learning || !vx.L2miss || !vx.L3miss || !vx.Proxy {
			t.Errorf("%s on %s: gbp %v learning %v l2miss %v l3miss %v proxy %v, want all on", device, h.Name, vx.GBP, vx.Learning, vx.L2miss, vx.L3miss, vx.Proxy)
		}
	}
	if got := vxlanDevice(t, h2).HardwareAddr.String(); got != mac {
		t.Errorf("the recreated device's MAC is %s, want the old one's %s", got, mac)
	}
	if l := leaseOf(t, o, mustSubnet(t, h2)); l.VtepMAC.String() != mac {
		t.Errorf("h2's lease publishes %s, want the device's %s", l.VtepMAC, mac)
	}
	firstPing(t, h1, h2.Container.Extra[0])
	firstPing(t, h2, h1.Container.Extra[0])
	firstPing(t, h2, h1.Container.Extra[1])
	// Learning on: the kernel learnt the peer's VTEP from its packets
	// too, beside vtepd's entry; both name the same one.
	l1 := leaseOf(t, o, mustSubnet(t, h1))
	if got := pointingAt(t, h2, l1.VtepMAC, l1.Subnet); !slices.Contains(got, fmt.Sprintf("fdb %s dst %s", l1.VtepMAC, h1.IP)) {
		t.Errorf("h2 holds %q for h1, want its FDB entry to %s", got, h1.IP)
	}
}
