package fabric

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The writer's messages, as the kernel parses them: lengths, family, and
// NDA_DST of the address's size, NDA_LLADDR after it on a 4-byte boundary.
func TestWriterMessages(t *testing.T) {
	w := &writer{ifindex: 7, buf: make([]byte, 0, maxBatch*sizeofNeigh6W)}
	mac := [6]byte{2, 1, 2, 3, 4, 5}
	w.fdb(mac, netip.MustParseAddr("2001:db8::9"))
	w.neigh(netip.MustParseAddr("10.5.1.2"), mac, true)
	w.neigh(netip.MustParseAddr("fd00:10::1"), mac, false)
	ne := binary.NativeEndian
	type msg struct {
		family uint8
		state  uint16
		flags  uint8
		dst    netip.Addr
		size   int
	}
	want := []msg{
		{unix.AF_BRIDGE, unix.NUD_PERMANENT, unix.NTF_SELF, netip.MustParseAddr("2001:db8::9"), sizeofNeigh6W},
		{unix.AF_INET, unix.NUD_PERMANENT, 0, netip.MustParseAddr("10.5.1.2"), sizeofNeighW},
		{unix.AF_INET6, unix.NUD_REACHABLE, 0, netip.MustParseAddr("fd00:10::1"), sizeofNeigh6W},
	}
	b := w.buf
	for i, m := range want {
		l := int(ne.Uint32(b[0:]))
		if l != m.size || l%4 != 0 || ne.Uint16(b[4:]) != unix.RTM_NEWNEIGH || ne.Uint32(b[8:]) != uint32(i+1) {
			t.Fatalf("message %d: len %d type %d seq %d", i, l, ne.Uint16(b[4:]), ne.Uint32(b[8:]))
		}
		if b[16] != m.family || ne.Uint32(b[20:]) != 7 || ne.Uint16(b[24:]) != m.state || b[26] != m.flags {
			t.Errorf("message %d: ndmsg % x", i, b[16:28])
		}
		alen := m.dst.BitLen() / 8
		if ne.Uint16(b[28:]) != uint16(4+alen) || ne.Uint16(b[30:]) != unix.NDA_DST {
			t.Errorf("message %d: NDA_DST header % x", i, b[28:32])
		}
		if dst, _ := netip.AddrFromSlice(b[32 : 32+alen]); dst != m.dst {
			t.Errorf("message %d: NDA_DST %s, want %s", i, dst, m.dst)
		}
		ll := b[32+alen:]
		if ne.Uint16(ll[0:]) != 10 || ne.Uint16(ll[2:]) != unix.NDA_LLADDR || [6]byte(ll[4:10]) != mac {
			t.Errorf("message %d: NDA_LLADDR % x", i, ll[:12])
		}
		b = b[l:]
	}
	if len(b) != 0 || w.n != 3 || w.last != sizeofNeigh6W+sizeofNeighW {
		t.Errorf("%d bytes left, %d messages, last at %d", len(b), w.n, w.last)
	}
}

func TestRoutes(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	for _, tc := range []struct {
		r      Route
		str    string
		bad    string // a word of check's error, or ""
		link   int
		flags  int
		scope  netlink.Scope
		hasSrc bool
	}{
		{r: Route{Dst: p("10.5.0.0/16")}, str: "10.5.0.0/16", link: 3, scope: netlink.SCOPE_LINK, hasSrc: true},
		{r: Route{Dst: p("fd00:10::/48")}, str: "fd00:10::/48", link: 3, scope: netlink.SCOPE_UNIVERSE, hasSrc: true},
		{r: Route{Dst: p("fd00:10:0:2::/64"), Via: a("fd00:10:0:2::")}, str: "fd00:10:0:2::/64 via fd00:10:0:2:: onlink", link: 3, flags: int(netlink.FLAG_ONLINK), scope: netlink.SCOPE_UNIVERSE, hasSrc: true},
		{r: Route{Dst: p("10.5.2.0/24"), Via: a("198.51.100.12"), Direct: true}, str: "10.5.2.0/24 via 198.51.100.12 (direct)", link: 9, scope: netlink.SCOPE_UNIVERSE},
		{r: Route{Dst: p("fd00:10:0:2::/64"), Via: a("198.51.100.12"), Direct: true}, bad: "family"},
		{r: Route{Dst: p("fd00:10:0:2::/64"), Direct: true}, bad: "gateway"},
		{r: Route{}, bad: "destination"},
	} {
		err := tc.r.check()
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("%+v: check %v, want an error about %s", tc.r, err, tc.bad)
			}
			continue
		}
		if err != nil || tc.r.String() != tc.str {
			t.Errorf("%+v: %q, %v; want %q", tc.r, tc.r.String(), err, tc.str)
		}
		nr := tc.r.netlink(3, 9, a("10.5.1.0"))
		ones, bits := nr.Dst.Mask.Size()
		if nr.LinkIndex != tc.link || nr.Flags != tc.flags || nr.Scope != tc.scope || (nr.Src != nil) != tc.hasSrc ||
			ones != tc.r.Dst.Bits() || bits != tc.r.Dst.Addr().BitLen() {
			t.Errorf("%s: netlink %+v", tc.r, nr)
		}
		if tc.r.Via.IsValid() && !nr.Gw.Equal(tc.r.Via.AsSlice()) {
			t.Errorf("%s: gateway %s", tc.r, nr.Gw)
		}
		if back, ok := prefixOf(nr.Dst); !ok || back != tc.r.Dst {
			t.Errorf("%s: prefixOf gives %s", tc.r, back)
		}
	}
	if back, ok := prefixOf(&net.IPNet{IP: net.ParseIP("10.5.1.0"), Mask: net.CIDRMask(24, 32)}); !ok || back != p("10.5.1.0/24") {
		t.Errorf("a 16-byte IPv4 address with a 4-byte mask: %s", back)
	}
	nets := []netip.Prefix{p("10.5.0.0/16"), p("fd00:10::/48")}
	for q, want := range map[string]bool{"10.5.2.0/24": true, "10.0.0.0/8": false, "fd00:10:0:2::/64": true, "fd00:11::/64": false, "::ffff:10.5.2.0/120": false} {
		if inside(p(q), nets) != want {
			t.Errorf("inside(%s) = %v", q, !want)
		}
	}
}

func TestDeviceSpecMTU(t *testing.T) {
	u := Underlay{Name: "eth0", MTU: 1500, Addr: netip.MustParseAddr("198.51.100.11"), Addr6: netip.MustParseAddr("2001:db8::11")}
	for _, tc := range []struct {
		spec DeviceSpec
		mtu  int
		err  string
	}{
		{spec: DeviceSpec{}, mtu: 1450},
		{spec: DeviceSpec{IPv6: true}, mtu: 1430},
		{spec: DeviceSpec{IPv6: true, Local: u.Addr}, mtu: 1450},
		{spec: DeviceSpec{IPv6: true, MTU: 1400}, mtu: 1330},
		{spec: DeviceSpec{MTU: 118}, mtu: 68},
		{spec: DeviceSpec{MTU: 117}, err: "Backend.MTU 117 less 50 for VXLAN over IPv4 leaves 67, below the 68 an IPv4 link needs"},
		{spec: DeviceSpec{IPv6: true, MTU: 1349}, err: "Backend.MTU 1349 less 70 for VXLAN over IPv6 leaves 1279, below the 1280 an IPv6 link needs"},
		{spec: DeviceSpec{IPv6: true, Underlay: Underlay{Name: "tun0", MTU: 1300}}, err: "the MTU of tun0 1300"},
	} {
		s := tc.spec
		s.Name = "flannel.1"
		if s.Underlay.Name == "" {
			s.Underlay = u
		}
		mtu, err := s.mtu(s.local())
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%+v: %d, %v; want %q", tc.spec, mtu, err, tc.err)
			}
			continue
		}
		if err != nil || mtu != tc.mtu {
			t.Errorf("%+v: %d, %v; want %d", tc.spec, mtu, err, tc.mtu)
		}
	}
	if DeviceName(1, false) != "flannel.1" || DeviceName(4096, true) != "flannel-v6.4096" {
		t.Errorf("names %s %s", DeviceName(1, false), DeviceName(4096, true))
	}
}

func TestReaches(t *testing.T) {
	u := Underlay{
		Addr: netip.MustParseAddr("198.51.100.11"), Subnet: netip.MustParsePrefix("198.51.100.0/24"),
		Addr6: netip.MustParseAddr("2001:db8:5::11"), Subnet6: netip.MustParsePrefix("2001:db8:5::/64"),
	}
	for peer, want := range map[string]bool{
		"198.51.100.12": true, "::ffff:198.51.100.12": true, "198.51.101.12": false, "198.51.100.11": false,
		"2001:db8:5::12": true, "2001:db8:6::12": false, "2001:db8:5::11": false,
	} {
		if got := u.Reaches(netip.MustParseAddr(peer)); got != want {
			t.Errorf("Reaches(%s) = %v", peer, got)
		}
	}
	if (Underlay{Addr: u.Addr, Subnet: u.Subnet}).Reaches(netip.MustParseAddr("2001:db8:5::12")) || u.Reaches(netip.Addr{}) {
		t.Errorf("an underlay without IPv6 reaches an IPv6 peer, or one reaches nothing")
	}
}

// flannel's order of IPv6 addresses (compareAddrs), deprecated ones out,
// the kernel's order kept among equals.
func TestIPv6AddrOrder(t *testing.T) {
	addr := func(s string, flags int) netlink.Addr {
		p := netip.MustParsePrefix(s)
		return netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)}, LinkIndex: 2, Flags: flags}
	}
	in := []netlink.Addr{
		addr("2001:db8::7/64", unix.IFA_F_TEMPORARY),
		addr("fe80::1/64", unix.IFA_F_PERMANENT),
		addr("2001:db8::d/64", 0),
		addr("2001:db8::de/64", unix.IFA_F_PERMANENT|unix.IFA_F_DEPRECATED),
		addr("2001:db8::a/64", unix.IFA_F_PERMANENT),
		addr("fd00::b/64", unix.IFA_F_PERMANENT),
		addr("ff02::1/128", unix.IFA_F_PERMANENT),
		{IPNet: &net.IPNet{IP: net.ParseIP("2001:db8::c"), Mask: net.CIDRMask(64, 128)}, LinkIndex: 3, Flags: unix.IFA_F_PERMANENT},
	}
	var got []string
	for _, p := range ipv6Addrs(in, 2) {
		got = append(got, p.String())
	}
	want := "2001:db8::a/64 fd00::b/64 2001:db8::d/64 2001:db8::7/64 fe80::1/64"
	if strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
}
