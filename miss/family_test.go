package miss

import (
	"net/netip"
	"testing"

	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Dual-stack leases: each has an IPv4 and an IPv6 part, with a VTEP MAC of
// its own per family (flannel's two devices).
var (
	ownDual = store.Lease{Key: "own", Subnet: ownLease.Subnet, PublicIP: ownLease.PublicIP, VtepMAC: ownLease.VtepMAC,
		IPv6Subnet: netip.MustParsePrefix("fd00:10:0:1::/64"), PublicIPv6: netip.MustParseAddr("2001:db8::1"), VtepMACv6: store.MAC{0x02, 6, 0, 0, 0, 1}}
	peerDual = store.Lease{Key: "peer", Subnet: peerLease.Subnet, PublicIP: peerLease.PublicIP, VtepMAC: peerLease.VtepMAC,
		IPv6Subnet: netip.MustParsePrefix("fd00:10:0:2::/64"), PublicIPv6: netip.MustParseAddr("2001:db8::2"), VtepMACv6: store.MAC{0x02, 6, 0, 0, 0, 2}}
	// v6OverV4 is an IPv6-only lease whose IPv6 part rides the IPv4
	// underlay: no PublicIPv6, its PublicIP is the VTEP address.
	v6OverV4 = store.Lease{Key: "v6only", PublicIP: netip.MustParseAddr("198.51.100.33"),
		IPv6Subnet: netip.MustParsePrefix("fd00:10:0:3::/64"), VtepMACv6: store.MAC{0x02, 6, 0, 0, 0, 3}}
)

func newV6Responder(leases ...store.Lease) (*Responder, *stateKernel) {
	fl := &fakeLeases{leases: append([]store.Lease{ownDual}, leases...)}
	k := newStateKernel()
	cfg := ResponderConfig{Ifindex: 8, Network: netip.MustParsePrefix("fd00:10::/48"), Own: ownDual.IPv6Subnet}
	return NewResponder(cfg, fl, k, zap.NewNop()), k
}

func l3Miss6(ip string) *Miss {
	return &Miss{Kind: L3, Ifindex: 8, State: unix.NUD_INCOMPLETE, IP: netip.MustParseAddr(ip)}
}

// TestIPv6ResponderAnswersWithTheIPv6Part: an IPv6 miss is answered with
// the lease's IPv6 part, FDB entry first; an IPv6 part over an IPv4
// underlay points the FDB entry at the IPv4 address.
func TestIPv6ResponderAnswersWithTheIPv6Part(t *testing.T) {
	r, k := newV6Responder(peerDual, v6OverV4)
	res := r.Answer(l3Miss6("fd00:10:0:2::7"))
	if res.Outcome != Answered || res.Lease.VtepMAC != peerDual.VtepMACv6 || res.Lease.PublicIP != peerDual.PublicIPv6 {
		t.Fatalf("IPv6 miss: %+v", res)
	}
	if ops := k.takeOps(); len(ops) != 2 || ops[0] != "set-fdb 02:06:00:00:00:02 2001:db8::2" || ops[1] != "set-neigh fd00:10:0:2::7 02:06:00:00:00:02" {
		t.Errorf("ops %v, want the IPv6 FDB entry, then the neighbour", ops)
	}
	if n := k.neigh[netip.MustParseAddr("fd00:10:0:2::7")]; n.State != unix.NUD_PERMANENT {
		t.Errorf("IPv6 answer is %s, want PERMANENT", StateString(uint16(n.State)))
	}
	if res := r.Answer(l3Miss6("fd00:10:0:3::9")); res.Outcome != Answered || res.Lease.PublicIP != v6OverV4.PublicIP {
		t.Errorf("IPv6 over an IPv4 underlay: %+v", res)
	}
	// Not ours to answer: an IPv4 address on the IPv6 device, our own
	// IPv6 subnet, and an IPv6 address no lease holds.
	for ip, want := range map[string]Outcome{"10.5.2.7": OutsideOverlay, "fd00:10:0:1::5": OwnSubnet, "fd00:10:0:99::1": NoLease} {
		if res := r.Answer(l3Miss6(ip)); res.Outcome != want {
			t.Errorf("%s: %v, want %v", ip, res.Outcome, want)
		}
	}
	// An L2 miss for the peer's IPv6 VTEP MAC; its IPv4 MAC is not this
	// device's.
	if res := r.Answer(&Miss{Kind: L2, Ifindex: 8, MAC: peerDual.VtepMACv6, HasMAC: true}); res.Outcome != Answered {
		t.Errorf("L2 miss for the IPv6 VTEP MAC: %v", res.Outcome)
	}
	if res := r.Answer(&Miss{Kind: L2, Ifindex: 8, MAC: peerDual.VtepMAC, HasMAC: true}); res.Outcome != NoLease {
		t.Errorf("L2 miss for the IPv4 VTEP MAC on the IPv6 device: %v, want no_lease", res.Outcome)
	}
}

// TestIPv6ResponderFollowsItsPart: a change of a lease's IPv4 part leaves
// the IPv6 device's entries alone; a change of its IPv6 part re-points
// them; the part's removal removes them.
func TestIPv6ResponderFollowsItsPart(t *testing.T) {
	r, k := newV6Responder(peerDual)
	if res := r.Answer(l3Miss6("fd00:10:0:2::7")); res.Outcome != Answered {
		t.Fatal(res)
	}
	k.takeOps()
	v4moved := peerDual
	v4moved.PublicIP = netip.MustParseAddr("198.51.100.77")
	r.ApplyChange(store.Change{Old: &peerDual, New: &v4moved})
	if ops := k.takeOps(); len(ops) != 0 {
		t.Errorf("an IPv4 change touched the IPv6 device: %v", ops)
	}
	v6moved := v4moved
	v6moved.PublicIPv6 = netip.MustParseAddr("2001:db8::77")
	r.ApplyChange(store.Change{Old: &v4moved, New: &v6moved})
	expectState(t, k, "fdb 02:06:00:00:00:02 2001:db8::77", "neigh fd00:10:0:2::7 02:06:00:00:00:02")
	v6gone := v6moved
	v6gone.IPv6Subnet, v6gone.PublicIPv6, v6gone.VtepMACv6 = netip.Prefix{}, netip.Addr{}, store.MAC{}
	r.ApplyChange(store.Change{Old: &v6moved, New: &v6gone})
	expectState(t, k)
}
