package store

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// dualConfig is testConfig with flannel's IPv6 defaults for fd00:10::/48.
func dualConfig() Config {
	cfg := testConfig()
	cfg.EnableIPv4, cfg.EnableIPv6 = true, true
	cfg.IPv6Network, cfg.IPv6SubnetLen = netip.MustParsePrefix("fd00:10::/48"), 64
	cfg.IPv6SubnetMin, cfg.IPv6SubnetMax = netip.MustParseAddr("fd00:10:0:1::"), netip.MustParseAddr("fd00:10:0:ffff::")
	return cfg
}

// v6OnlyConfig is dualConfig with IPv4 off.
func v6OnlyConfig() Config {
	cfg := dualConfig()
	cfg.EnableIPv4, cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax = false, netip.Prefix{}, 0, netip.Addr{}, netip.Addr{}
	return cfg
}

// mkLease6 makes a valid lease with the given parts ("" for none): public
// IPs and VTEP MACs derived from id, the IPv6 part's MAC another than the
// IPv4 part's, created and last modified at rev.
func mkLease6(subnet4, subnet6 string, id byte, rev int64) Lease {
	var l Lease
	if subnet4 != "" {
		l = mkLease(subnet4, id, rev)
	} else {
		l = Lease{VNI: 1, CreateRevision: rev, ModRevision: rev}
	}
	if subnet6 != "" {
		l.IPv6Subnet = netip.MustParsePrefix(subnet6)
		l.PublicIPv6 = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: id})
		l.VtepMACv6 = MAC{0x02, 0x66, 0, 0, 0, id}
	}
	l.Key = testSubnetsPrefix + LeaseKey(l.Subnet, l.IPv6Subnet)
	return l
}

// TestTableDualStack: a dual-stack lease is found by an address of either
// family and by either MAC, longest prefix first within each family, and
// packs (no odd lease) however long its IPv6 subnet.
func TestTableDualStack(t *testing.T) {
	tb := NewTable(dualConfig())
	a := mkLease6("10.5.1.0/24", "fd00:10:0:1::/64", 1, 1)
	b := mkLease6("10.5.2.0/24", "fd00:10:0:2::/64", 2, 2)
	c := mkLease6("", "fd00:10:0:3::/64", 3, 3) // IPv6-only, no IPv4 underlay address
	d := mkLease6("", "fd00:10:0:4::/64", 4, 4)
	d.PublicIP, d.PublicIPv6 = netip.MustParseAddr("198.51.100.4"), netip.Addr{} // IPv6 over IPv4
	e := mkLease6("10.5.5.0/24", "fd00:10:0:2:8000::/65", 5, 5)                  // inside b's /64, longer
	f := mkLease6("10.5.6.0/24", "fd00:10:0:6::/64", 6, 6)
	f.VtepMACv6 = f.VtepMAC // one MAC for both devices
	g := mkLease6("10.5.7.0/24", "fd00:10:0:7:1::/80", 7, 7)
	for _, l := range []Lease{a, b, c, d, f, g} {
		mustAdmit(t, tb, l)
	}
	mustReject(t, tb, e, "IPv6 subnet fd00:10:0:2:8000::/65 overlaps fd00:10:0:2::/64 of "+b.Key)
	expectAdmitted(t, tb, a, b, c, d, f, g)
	tb.mu.RLock()
	if len(tb.odd) != 0 {
		t.Errorf("%d odd leases in a dual-stack table, want none", len(tb.odd))
	}
	tb.mu.RUnlock()

	for addr, want := range map[string]Lease{
		"10.5.1.1": a, "fd00:10:0:1::1": a, "fd00:10:0:1:ffff:ffff:ffff:ffff": a,
		"10.5.2.200": b, "fd00:10:0:2:8000::1": b,
		"fd00:10:0:3::": c, "fd00:10:0:4:1:2:3:4": d, "fd00:10:0:6::9": f, "fd00:10:0:7:1::ff": g,
	} {
		if got, ok := tb.LookupIP(netip.MustParseAddr(addr)); !ok || got != want {
			t.Errorf("LookupIP(%s) = %s, %v; want %s", addr, fmtLease(&got), ok, fmtLease(&want))
		}
	}
	for _, addr := range []string{"fd00:10:0:5::1", "fd00:10:0:7:2::1", "fd00:11::1", "::ffff:10.5.1.1", "fe80::1", "10.5.3.1", "::", "::1"} {
		if got, ok := tb.LookupIP(netip.MustParseAddr(addr)); ok {
			t.Errorf("LookupIP(%s) = %s, want none", addr, fmtLease(&got))
		}
	}
	for m, want := range map[MAC]Lease{a.VtepMAC: a, a.VtepMACv6: a, c.VtepMACv6: c, f.VtepMAC: f, d.VtepMACv6: d} {
		if got, ok := tb.LookupMAC(m); !ok || got != want {
			t.Errorf("LookupMAC(%s) = %s, %v; want %s", m, fmtLease(&got), ok, fmtLease(&want))
		}
	}
	// An IPv6-only lease has no IPv4 MAC: the zero MAC finds nothing.
	if got, ok := tb.LookupMAC(MAC{}); ok {
		t.Errorf("LookupMAC(zero) = %s", fmtLease(&got))
	}
	if p, ok := c.IPv6(); !ok || p.PublicIP != c.PublicIPv6 {
		t.Errorf("IPv6-only lease's part: %+v", p)
	}
	if p, _ := d.IPv6(); p.PublicIP != d.PublicIP {
		t.Errorf("an IPv6 part over IPv4 goes to %s", p.PublicIP)
	}

	// Removing and updating keep both families' indexes straight.
	tremove(tb, b.Key)
	mustAdmit(t, tb, e)
	b2 := b
	b2.IPv6Subnet, b2.Key, b2.ModRevision = netip.MustParsePrefix("fd00:10:0:2::/65"), testSubnetsPrefix+LeaseKey(b.Subnet, netip.MustParsePrefix("fd00:10:0:2::/65")), 9
	mustAdmit(t, tb, b2)
	g2 := g
	g2.VtepMACv6, g2.PublicIPv6, g2.ModRevision = MAC{0x02, 0x77, 0, 0, 0, 7}, netip.MustParseAddr("2001:db8::77"), 10
	expectChanges(t, mustAdmit(t, tb, g2), updated(g, g2))
	if _, ok := tb.LookupMAC(g.VtepMACv6); ok {
		t.Error("LookupMAC finds g's old IPv6 MAC")
	}
	expectAdmitted(t, tb, a, b2, c, d, e, f, g2)
	for _, l := range []Lease{a, b2, c, d, e, f, g2} {
		tremove(tb, l.Key)
		checkInvariants(t, tb)
	}
	if tb.Len() != 0 || len(tb.lengths) != 0 || len(tb.lengths6) != 0 {
		t.Errorf("%d leases, %d and %d length indexes left", tb.Len(), len(tb.lengths), len(tb.lengths6))
	}
}

// TestTableIPv6Conflicts: overlaps are judged within each family, and a
// VTEP MAC names one lease whatever the part: a lookup by MAC is never
// ambiguous.
func TestTableIPv6Conflicts(t *testing.T) {
	tb := NewTable(dualConfig())
	own := mkLease6("10.5.1.0/24", "fd00:10:0:1::/64", 1, 50)
	tb.SetOwn(own.Key)
	mustAdmit(t, tb, own)
	a := mkLease6("10.5.2.0/24", "fd00:10:0:2::/64", 2, 2)
	mustAdmit(t, tb, a)
	// Another family's subnet of the same number is no overlap.
	mustAdmit(t, tb, mkLease6("10.5.3.0/24", "fd00:10:0:3::/64", 3, 3))

	sameV6 := mkLease6("10.5.4.0/24", "fd00:10:0:2::/64", 4, 4)
	mustReject(t, tb, sameV6, "IPv6 subnet fd00:10:0:2::/64 overlaps fd00:10:0:2::/64 of "+a.Key)
	sameV4 := mkLease6("10.5.2.0/24", "fd00:10:0:5::/64", 5, 5)
	mustReject(t, tb, sameV4, "subnet 10.5.2.0/24 overlaps 10.5.2.0/24 of "+a.Key)
	wider := mkLease6("", "fd00:10::/56", 6, 6)
	mustReject(t, tb, wider, "IPv6 subnet fd00:10::/56 claims this host's own IPv6 subnet fd00:10:0:1::/64")
	v4only := mkLease6("10.5.2.0/25", "", 7, 7)
	mustReject(t, tb, v4only, "overlaps 10.5.2.0/24")

	macAcross := mkLease6("10.5.8.0/24", "fd00:10:0:8::/64", 8, 8)
	macAcross.VtepMACv6 = a.VtepMAC // a's IPv4 MAC as this one's IPv6 MAC
	mustReject(t, tb, macAcross, "VtepMAC "+a.VtepMAC.String()+" is already used by "+a.Key)
	ownMAC := mkLease6("", "fd00:10:0:9::/64", 9, 9)
	ownMAC.VtepMACv6 = own.VtepMACv6
	mustReject(t, tb, ownMAC, "VtepMAC "+own.VtepMACv6.String()+" is this host's own")

	// The winner goes: the oldest waiting lease of each clash comes in, and
	// the /25 now clashes with the older of them.
	tremove(tb, a.Key)
	expectAdmitted(t, tb, own, mkLease6("10.5.3.0/24", "fd00:10:0:3::/64", 3, 3), sameV6, sameV4, macAcross)
	reasons := map[string]string{}
	for _, r := range tb.Rejected() {
		reasons[r.Lease.Key] = r.Reason
	}
	if len(reasons) != 3 || !strings.Contains(reasons[v4only.Key], "overlaps 10.5.2.0/24 of "+sameV4.Key) ||
		!strings.Contains(reasons[wider.Key], "this host's own") || !strings.Contains(reasons[ownMAC.Key], "this host's own") {
		t.Errorf("rejected: %q, want the /25 (now under %s), the /56 and the one with this host's MAC", reasons, sameV4.Key)
	}
}

// TestTableIPv6Only: an IPv6-only overlay admits IPv6-only leases and finds
// them by IPv6 address and MAC; IPv4 addresses find nothing.
func TestTableIPv6Only(t *testing.T) {
	tb := NewTable(v6OnlyConfig())
	var leases []Lease
	for i := 1; i <= 50; i++ {
		l := mkLease6("", fmt.Sprintf("fd00:10:0:%x::/64", i), byte(i), int64(i))
		mustAdmit(t, tb, l)
		leases = append(leases, l)
	}
	expectAdmitted(t, tb, leases...)
	if got, ok := tb.LookupIP(netip.MustParseAddr("fd00:10:0:2a::7")); !ok || got != leases[0x2a-1] {
		t.Errorf("LookupIP = %s, %v", fmtLease(&got), ok)
	}
	if got, ok := tb.LookupIP(netip.MustParseAddr("10.5.1.1")); ok {
		t.Errorf("LookupIP of an IPv4 address in an IPv6-only overlay = %s", fmtLease(&got))
	}
	tb.mu.RLock()
	if len(tb.lengths) != 0 || len(tb.lengths6) != 1 || tb.lengths6[0].direct == nil || tb.lengths6[0].nDirect != 50 {
		t.Errorf("indexes: %d IPv4, %d IPv6", len(tb.lengths), len(tb.lengths6))
	}
	tb.mu.RUnlock()
}

// TestTableCheckIPv6: each part is checked against its family; the sync
// skips a lease that does not fit with a warning naming the key, and takes
// a dual-stack flanneld's lease in an IPv4-only overlay for its IPv4 part.
func TestTableCheckIPv6(t *testing.T) {
	const d4 = `"BackendData":{"VNI":1,"VtepMAC":"82:4b:b6:2f:54:4e"}`
	const d6 = `"BackendV6Data":{"VNI":1,"VtepMAC":"ae:1f:0c:6a:93:02"}`
	dual := `{"PublicIP":"198.51.100.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",` + d4 + `,` + d6 + `}`
	v6 := `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"vxlan",` + d6 + `}`
	tests := []struct {
		cfg        Config
		key, value string
		says       string // "" for admitted
	}{
		{testConfig(), "10.5.48.0-24&fd00:10::-64", dual, ""},
		{testConfig(), "0.0.0.0-0&fd00:10::-64", v6, "IPv6 subnet fd00:10::/64 is the lease's only one, but the overlay is IPv4-only"},
		{dualConfig(), "10.5.48.0-24&fd00:10:0:30::-64", dual, ""},
		{dualConfig(), "10.5.48.0-24&fd00:99::-64", dual, "IPv6 subnet fd00:99::/64 is outside the overlay's IPv6Network fd00:10::/48"},
		{dualConfig(), "10.5.48.0-24&fd00::-40", dual, "IPv6 subnet fd00::/40 is outside the overlay's IPv6Network fd00:10::/48"},
		{dualConfig(), "10.9.48.0-24&fd00:10:0:30::-64", dual, "subnet 10.9.48.0/24 is outside the overlay network 10.5.0.0/16"},
		{dualConfig(), "10.5.48.0-24", `{"PublicIP":"198.51.100.11","PublicIPv6":null,"BackendType":"vxlan",` + d4 + `}`, ""},
		{dualConfig(), "0.0.0.0-0&fd00:10:0:30::-64", v6, ""},
		{v6OnlyConfig(), "0.0.0.0-0&fd00:10:0:30::-64", v6, ""},
		{v6OnlyConfig(), "10.5.48.0-24&fd00:10:0:30::-64", dual, "subnet 10.5.48.0/24 is IPv4, but the overlay is IPv6-only"},
		{v6OnlyConfig(), "0.0.0.0-0&fd00:10:0:30::-64", strings.Replace(v6, `"VNI":1`, `"VNI":2`, 1), "BackendV6Data.VNI 2 differs from the network's VNI 1"},
		// Bad input from the issue: skipped, never a panic.
		{dualConfig(), "10.5.48.0-24&fd00:10:0:30::-64", `{"PublicIP":"198.51.100.11","PublicIPv6":null,"BackendType":"vxlan",` + d4 + `}`, "BackendV6Data is missing"},
		{dualConfig(), "10.5.48.0-24", dual, "BackendV6Data given, but the key has no IPv6 part"},
		{dualConfig(), "10.5.48.0-24&fd00:10:0:30::-64", strings.Replace(dual, "2001:db8::11", "2001:db8::1::1", 1), `PublicIPv6 "2001:db8::1::1" is not an IPv6 address`},
		{dualConfig(), "10.5.48.0-24&FD00:10:0:30::-64", dual, "lowercase hex digits"},
		{dualConfig(), "10.5.48.0-24&::ffff:10.5.48.0-120", dual, "not of the form"},
	}
	for _, tt := range tests {
		core, logs := observer.New(zapcore.WarnLevel)
		tb := NewTable(tt.cfg)
		s := &syncer{t: tb, prefix: testSubnetsPrefix, log: zap.New(core), warned: make(map[string]int64)}
		key := testSubnetsPrefix + tt.key
		l, ok := s.parse(&mvccpb.KeyValue{Key: []byte(key), Value: []byte(tt.value), CreateRevision: 1, ModRevision: 1})
		if tt.says == "" {
			if !ok {
				t.Errorf("%s in %s: skipped: %v", tt.key, tt.cfg.IPv6Network, logs.All())
				continue
			}
			if tt.cfg.IPv6Network.IsValid() != l.IPv6Subnet.IsValid() && strings.Contains(tt.key, "&") {
				t.Errorf("%s in %s: admitted as %s", tt.key, tt.cfg.IPv6Network, fmtLease(&l))
			}
			mustAdmit(t, tb, l)
			continue
		}
		if ok {
			t.Errorf("%s in %s: admitted %s, want skipped for %q", tt.key, tt.cfg.IPv6Network, fmtLease(&l), tt.says)
			continue
		}
		if w := logs.All(); len(w) != 1 || w[0].ContextMap()["key"] != key || !strings.Contains(fmt.Sprint(w[0].ContextMap()["error"]), tt.says) {
			t.Errorf("%s: warnings %v, want one naming the key and saying %q", tt.key, w, tt.says)
		}
	}
}

// TestTableIPv6Hashed: in an IPv6 network of too many subnets of a length
// to number them (fd00::/8 of /64s), leases are hashed by fingerprint; ones
// that share a fingerprint are each found by their own subnet, and an
// address that only shares it finds nothing.
func TestTableIPv6Hashed(t *testing.T) {
	cfg := dualConfig()
	cfg.IPv6Network = netip.MustParsePrefix("fd00::/8")
	tb := NewTable(cfg)
	// A multiplier of 1 makes the fingerprint of a /64 the top 32 bits of
	// its address: fd00:0000 for all these.
	li := newLengthIndex6(64, cfg.IPv6Network)
	li.fpMul = 1
	tb.lengths6 = []lengthIndex6{li}
	var leases []Lease
	for i := range 40 {
		l := mkLease6("", fmt.Sprintf("fd00:0:%x:%x::/64", i/8, i%8+1), byte(i+1), int64(i+1))
		leases = append(leases, l)
		mustAdmit(t, tb, l)
	}
	tb.mu.RLock()
	if li := &tb.lengths6[0]; li.direct != nil || li.bySubnet.len() != 40 || li.fingerprint(0xfd00000000000001, 0) != li.fingerprint(0xfd00000000040008, 0) {
		t.Fatalf("the /64s are not all hashed under one fingerprint")
	}
	tb.mu.RUnlock()
	for i := 0; i < 40; i += 3 {
		tremove(tb, leases[i].Key)
	}
	var left []Lease
	for i, l := range leases {
		if i%3 != 0 {
			left = append(left, l)
		}
	}
	expectAdmitted(t, tb, left...)
	for _, a := range []string{"fd00:0:0:9::1", "fd00:0:0:1::1", "fd00:0:5:1::1"} {
		if l, ok := tb.LookupIP(netip.MustParseAddr(a)); ok {
			t.Errorf("LookupIP(%s) finds %s", a, fmtLease(&l))
		}
	}
	// Outside the network (put admits it, the sync would not), or much
	// longer than it: hashed, packed all the same, found.
	out := mkLease6("", "2001:db8:1::/64", 90, 90)
	long := mkLease6("", "fd00:1::7:0/112", 91, 91)
	mustAdmit(t, tb, out)
	mustAdmit(t, tb, long)
	tb.mu.RLock()
	if len(tb.odd) != 0 || len(tb.lengths6) != 2 || tb.lengths6[0].direct != nil || tb.lengths6[1].direct != nil {
		t.Errorf("%d odd leases, %d IPv6 length indexes; want none odd, /112 and /64 hashed", len(tb.odd), len(tb.lengths6))
	}
	tb.mu.RUnlock()
	for a, want := range map[string]Lease{"2001:db8:1::5": out, "fd00:1::7:ff": long} {
		if got, ok := tb.LookupIP(netip.MustParseAddr(a)); !ok || got != want {
			t.Errorf("LookupIP(%s) = %s, %v", a, fmtLease(&got), ok)
		}
	}
	checkInvariants(t, tb)
}

// TestTableIPv6Packs: every lease with an IPv6 part packs exactly, subnets
// longer than /64 and outside the network included; one that does not (a
// zone, an address of the wrong family) is kept whole.
func TestTableIPv6Packs(t *testing.T) {
	for _, tt := range []struct{ network, subnet string }{
		{"fd00:10::/48", "fd00:10:0:30::/64"},
		{"fd00:10::/48", "fd00:10:0:ffff:ffff:ffff::/96"},
		{"2001:cafe:42::/56", "2001:cafe:42:ff::/64"},
		{"fd00::/8", "fdff:ffff:ffff:ffff::/64"},
		{"fd00::/8", "fd12:3456:789a:bcde:f000::/72"},
		{"fd00:10::/112", "fd00:10::ff00/120"},
		{"fd00:10::/124", "fd00:10::c/126"},
		{"fd00:10:0:1:2:3:4::/120", "fd00:10:0:1:2:3:4:fc/126"},
		{"::/0", "ffff::/16"},
	} {
		cfg := v6OnlyConfig()
		cfg.IPv6Network = netip.MustParsePrefix(tt.network)
		tb := NewTable(cfg)
		l := mkLease6("", tt.subnet, 1, 1)
		l.EtcdLease = -1
		if r, r6, exact := tb.pack(l); !exact || r.odd || r.flags&recV6 == 0 {
			t.Errorf("in %s: pack(%s) = %+v, %+v, %v", tt.network, fmtLease(&l), r, r6, exact)
		}
		l.PublicIPv6, l.PublicIP = netip.Addr{}, netip.MustParseAddr("198.51.100.1")
		if _, _, exact := tb.pack(l); !exact {
			t.Errorf("in %s: an IPv6 part over IPv4 does not pack", tt.network)
		}
	}
	tb := NewTable(dualConfig())
	dual := mkLease6("10.5.1.0/24", "fd00:10:0:1::/64", 1, 1)
	if _, _, exact := tb.pack(dual); !exact {
		t.Errorf("a dual-stack lease does not pack")
	}
	zone := dual
	zone.PublicIPv6 = netip.MustParseAddr("fe80::1%eth0")
	mapped := dual
	mapped.PublicIPv6 = netip.MustParseAddr("::ffff:198.51.100.1")
	v4 := dual
	v4.PublicIPv6 = netip.MustParseAddr("198.51.100.1")
	outside := dual
	outside.IPv6Subnet = netip.MustParsePrefix("2001:db8::/64")
	v6public := mkLease6("", "fd00:10:0:2::/64", 2, 2)
	v6public.PublicIP = netip.MustParseAddr("2001:db8::2") // IPv6 in the IPv4 field
	for _, l := range []Lease{zone, v4, v6public} {
		if _, _, exact := tb.pack(l); exact {
			t.Errorf("pack(%s) says it is exact", fmtLease(&l))
		}
	}
	// As16 keeps an IPv4-mapped address as it is.
	for _, l := range []Lease{mapped, outside} {
		if _, _, exact := tb.pack(l); !exact {
			t.Errorf("pack(%s) is not exact", fmtLease(&l))
		}
	}
}

// TestTableRandomOpsDualStack is TestTableRandomOps over a dual-stack
// overlay with IPv4-only, dual-stack and IPv6-only leases of mixed
// lengths, whose MACs sometimes collide across families.
func TestTableRandomOpsDualStack(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 8))
	tb := NewTable(dualConfig())
	randomLease := func() Lease {
		var v4, v6 netip.Prefix
		kind := rng.IntN(3) // IPv4-only, dual-stack, IPv6-only
		if kind < 2 {
			bits := 22 + rng.IntN(6)
			v4 = netip.PrefixFrom(addrFrom(uint32(10<<24|5<<16)+rng.Uint32N(1<<11)), bits).Masked()
		}
		if kind > 0 {
			bits := 60 + rng.IntN(7) // /60../66 inside fd00:10::/56
			a := u128{0xfd00_0010_0000_0000 | rng.Uint64N(64), rng.Uint64N(4) << 62}.addr()
			v6 = netip.PrefixFrom(a, bits).Masked()
		}
		id := byte(1 + rng.IntN(12))
		l := Lease{Subnet: v4, IPv6Subnet: v6, VNI: 1}
		if v4.IsValid() {
			l.PublicIP, l.VtepMAC = netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(200))}), MAC{0x02, 0, 0, 0, 0, id}
		}
		if v6.IsValid() {
			l.VtepMACv6 = MAC{0x02, 0x66, 0, 0, 0, byte(1 + rng.IntN(12))}
			if rng.IntN(4) == 0 {
				l.VtepMACv6 = MAC{0x02, 0, 0, 0, 0, byte(1 + rng.IntN(12))} // in the IPv4 MACs' range
			}
			if rng.IntN(3) > 0 {
				l.PublicIPv6 = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(200))})
			} else if !l.PublicIP.IsValid() {
				l.PublicIP = netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(200))})
			}
		}
		l.Key = testSubnetsPrefix + LeaseKey(v4, v6)
		return l
	}
	testRandomOps(t, tb, rng, randomLease)
}
