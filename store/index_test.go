package store

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"unsafe"
)

// checkSlotIndex checks a slot index's structure: its size, its count, and
// that every entry is reachable from its key's home without crossing an
// empty entry (what lookups rely on). In an index of unique keys, get must
// find each.
func checkSlotIndex(t testing.TB, name string, h *slotIndex, unique bool) {
	t.Helper()
	size := len(h.ents)
	if size == 0 {
		if h.n != 0 {
			t.Errorf("%s index: empty, counts %d", name, h.n)
		}
		return
	}
	if bits.OnesCount(uint(size)) != 1 || size < minIndexSize || h.shift != uint(64-bits.TrailingZeros(uint(size))) || h.mul&1 == 0 {
		t.Errorf("%s index: size %d, shift %d, multiplier %x", name, size, h.shift, h.mul)
	}
	if 2*h.n > size {
		t.Errorf("%s index: %d keys in %d entries", name, h.n, size)
	}
	n := 0
	mask := uint64(size - 1)
	seen := make(map[uint32]bool)
	for i, e := range h.ents {
		if e.v == 0 {
			continue
		}
		n++
		for j := h.home(e.key); j != uint64(i); j = (j + 1) & mask {
			if h.ents[j].v == 0 {
				t.Errorf("%s index: key %x at %d is cut off from its home %d", name, e.key, i, h.home(e.key))
				break
			}
		}
		if !unique {
			continue
		}
		if seen[e.key] {
			t.Errorf("%s index: key %x stored twice", name, e.key)
		}
		seen[e.key] = true
		if s, ok := h.get(e.key); !ok || s != int32(e.v-1) {
			t.Errorf("%s index: get(%x) = %d, %v; stored %d", name, e.key, s, ok, e.v-1)
		}
	}
	if n != h.n {
		t.Errorf("%s index: %d keys stored, counts %d", name, n, h.n)
	}
}

// checkLengthIndex checks where a length index keeps its leases: directly
// by number when the network has few enough subnets of the length, and
// then only those outside the network in the hash index.
func checkLengthIndex(t testing.TB, li *lengthIndex, network netip.Prefix) {
	t.Helper()
	name := fmt.Sprintf("/%d", li.bits)
	checkSlotIndex(t, name, &li.bySubnet, true)
	nb := network.Bits()
	if wantDirect := network.Addr().Is4() && li.bits >= nb && li.bits-nb <= maxDirectBits; wantDirect != (li.direct != nil) {
		t.Errorf("%s index in %s: direct %v, want %v", name, network, li.direct != nil, wantDirect)
	}
	if li.direct == nil {
		return
	}
	n := 0
	for _, v := range li.direct {
		if v != 0 {
			n++
		}
	}
	if n != li.nDirect || len(li.direct) != 1<<(li.bits-nb) {
		t.Errorf("%s index: %d of %d direct entries used, counts %d", name, n, len(li.direct), li.nDirect)
	}
	for sub := range li.bySubnet.all() {
		if network.Contains(addrFrom(sub)) {
			t.Errorf("%s index: %s is in the network but hashed", name, addrFrom(sub))
		}
	}
}

// checkLengthIndex6 checks where an IPv6 length index keeps its leases, as
// checkLengthIndex does, and that each is found where it is kept.
func checkLengthIndex6(t testing.TB, tb *Table, li *lengthIndex6) {
	t.Helper()
	name := fmt.Sprintf("IPv6 /%d", li.bits)
	checkSlotIndex(t, name, &li.bySubnet, false)
	network := tb.cfg.IPv6Network
	nb := network.Bits()
	if wantDirect := network.Addr().Is6() && li.bits >= nb && li.bits-nb <= maxDirectBits; wantDirect != (li.direct != nil) {
		t.Errorf("%s index in %s: direct %v, want %v", name, network, li.direct != nil, wantDirect)
	}
	n := 0
	for _, v := range li.direct {
		if v != 0 {
			n++
		}
	}
	if n != li.nDirect || li.direct != nil && len(li.direct) != 1<<(li.bits-nb) {
		t.Errorf("%s index: %d of %d direct entries used, counts %d", name, n, len(li.direct), li.nDirect)
	}
	for fp, s := range li.bySubnet.all() {
		l := tb.at(s)
		u := u128Of(l.IPv6Subnet.Addr())
		if _, direct := li.inDirect(u.hi, u.lo); direct || li.fingerprint(u.hi, u.lo) != fp {
			t.Errorf("%s index: %s is hashed under %x, direct %v", name, l.IPv6Subnet, fp, direct)
		}
	}
	for s := range li.all() {
		l := tb.at(s)
		u := u128Of(l.IPv6Subnet.Addr())
		if got, ok := tb.get6(li, u.hi, u.lo); !ok || got != s {
			t.Errorf("%s index: get6(%s) = %d, %v; want slot %d", name, l.IPv6Subnet, got, ok, s)
		}
	}
}

// TestSlotIndexAgainstMap drives a slot index through random puts and
// deletes, over key sets small enough to collide and wrap around, growing
// and shrinking, and compares it with a map after every step.
func TestSlotIndexAgainstMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, keys := range []int{3, 20, 300, 5000} {
		var h slotIndex
		want := make(map[uint32]int32)
		for step := range 20 * keys {
			k := uint32(r.IntN(keys)) << 8
			// Phases of mostly puts and mostly deletes.
			putPhase := (step/(2*keys))%2 == 0
			if usual := r.IntN(4) != 0; putPhase == usual {
				s := int32(r.IntN(1 << 20))
				h.put(k, s, nil)
				want[k] = s
			} else {
				h.del(k, nil)
				delete(want, k)
			}
			if step%97 == 0 || keys < 50 {
				checkSlotIndex(t, "test", &h, true)
			}
			if h.len() != len(want) {
				t.Fatalf("%d keys: step %d: len %d, want %d", keys, step, h.len(), len(want))
			}
			probe := uint32(r.IntN(keys+5)) << 8
			s, ok := h.get(probe)
			if ws, wok := want[probe]; ok != wok || ok && s != ws {
				t.Fatalf("%d keys: step %d: get(%x) = %d, %v; want %d, %v", keys, step, probe, s, ok, ws, wok)
			}
			if t.Failed() {
				t.Fatalf("%d keys: step %d", keys, step)
			}
		}
		seen := 0
		for k, s := range h.all() {
			if want[k] != s {
				t.Errorf("all yields %x: %d, want %d", k, s, want[k])
			}
			seen++
		}
		if seen != len(want) {
			t.Errorf("all yields %d keys, want %d", seen, len(want))
		}
		for k := range want {
			h.del(k, nil)
		}
		if h.len() != 0 || h.ents != nil {
			t.Errorf("emptied index keeps %d keys in %d entries", h.len(), len(h.ents))
		}
	}
}

// TestSlotIndexSharedKeys: in the MAC index several entries share a key
// (a fingerprint), told apart by their slots.
func TestSlotIndexSharedKeys(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	var h slotIndex
	key := func(item int32) uint32 { return uint32(item % 3) }
	is := func(item int32) func(int32) bool { return func(s int32) bool { return s == item } }
	present := make(map[int32]bool)
	for step := range 20000 {
		item := int32(r.IntN(200))
		putPhase := (step/2000)%2 == 0
		if usual := r.IntN(4) != 0; putPhase == usual {
			h.put(key(item), item, is(item))
			present[item] = true
		} else {
			h.del(key(item), is(item))
			delete(present, item)
		}
		if step%50 == 0 {
			checkSlotIndex(t, "shared", &h, false)
		}
		if h.len() != len(present) {
			t.Fatalf("step %d: %d entries, want %d", step, h.len(), len(present))
		}
	}
	got := make(map[int32]bool)
	for k, s := range h.all() {
		if k != key(s) || got[s] {
			t.Errorf("entry %x: %d", k, s)
		}
		got[s] = true
	}
	if len(got) != len(present) {
		t.Errorf("%d items indexed, want %d", len(got), len(present))
	}
}

// TestTableMACFingerprintsCollide: leases whose MACs share a fingerprint
// are each found by their own MAC, and a MAC that only shares the
// fingerprint is not found.
func TestTableMACFingerprintsCollide(t *testing.T) {
	tb := NewTable(testConfig())
	tb.macMul = 1 // the fingerprint is the MAC's top 16 bits: 02:00 for all
	var leases []Lease
	for i := range 40 {
		l := mkLease(fmt.Sprintf("10.5.%d.0/24", i+1), byte(i+1), int64(i+1))
		leases = append(leases, l)
		mustAdmit(t, tb, l)
	}
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
	if macFingerprint(MAC{2, 0, 0, 0, 0, 99}, tb.macMul) != macFingerprint(left[0].VtepMAC, tb.macMul) {
		t.Fatal("the fingerprints do not collide")
	}
	if l, ok := tb.LookupMAC(MAC{2, 0, 0, 0, 0, 99}); ok {
		t.Errorf("LookupMAC finds %s for a MAC no lease has", fmtLease(&l))
	}
	if l, ok := tb.LookupMAC(leases[0].VtepMAC); ok {
		t.Errorf("LookupMAC finds %s for a removed lease's MAC", fmtLease(&l))
	}
}

func TestSlotIndexZeroKey(t *testing.T) {
	// 0.0.0.0 is a subnet's first address like any other.
	var h slotIndex
	if _, ok := h.get(0); ok {
		t.Fatal("empty index finds 0")
	}
	h.put(0, 0, nil)
	if s, ok := h.get(0); !ok || s != 0 {
		t.Fatalf("get(0) = %d, %v", s, ok)
	}
	h.del(0, nil)
	if _, ok := h.get(0); ok {
		t.Fatal("deleted 0 is found")
	}
}

func TestRecordPacksLeases(t *testing.T) {
	if n := unsafe.Sizeof(record{}); unsafe.Sizeof(uintptr(0)) == 8 && n != 64 {
		t.Errorf("a record is %d bytes, want one cache line", n)
	}
	if n := unsafe.Sizeof(record6{}); n != 40 {
		t.Errorf("a record6 is %d bytes, want 40", n)
	}
	pack := NewTable(testConfig()).pack
	// Leases as etcd gives them pack exactly.
	l, err := ParseLease("10.5.48.0-24", []byte(`{"PublicIP":"203.0.113.11","BackendType":"vxlan","BackendData":{"VNI":16777215,"VtepMAC":"e2:5a:5b:43:22:54"}}`))
	if err != nil {
		t.Fatal(err)
	}
	l.Key, l.CreateRevision, l.ModRevision, l.EtcdLease = testSubnetsPrefix+"10.5.48.0-24", 1<<40, 1<<41, -1
	if r, _, exact := pack(l); !exact || r.odd || r.lease() != l {
		t.Errorf("pack(%s) = %+v, %v", fmtLease(&l), r, exact)
	}
	for _, l := range []Lease{mkLease("0.0.0.0/1", 1, 1), mkLease("10.5.9.9/32", 255, 1<<62)} {
		if r, _, exact := pack(l); !exact || r.lease() != l {
			t.Errorf("pack(%s) = %+v, %v", fmtLease(&l), r, exact)
		}
	}

	// Anything else is kept whole, and the table gives it back unchanged.
	cfg := testConfig()
	cfg.Network = netip.MustParsePrefix("0.0.0.0/0")
	tb := NewTable(cfg)
	normal := mkLease("10.5.1.0/24", 1, 1)
	v6Public := mkLease("10.5.2.0/24", 2, 2)
	v6Public.PublicIP = netip.MustParseAddr("2001:db8::2")
	mapped := mkLease("10.5.3.0/24", 3, 3)
	mapped.PublicIP = netip.MustParseAddr("::ffff:192.0.2.3")
	bigVNI := mkLease("10.5.4.0/24", 4, 4)
	bigVNI.VNI = 1 << 40
	noPublic := mkLease("10.5.5.0/24", 5, 5)
	noPublic.PublicIP = netip.Addr{}
	odd := []Lease{v6Public, mapped, bigVNI, noPublic}
	for _, l := range odd {
		if _, _, exact := pack(l); exact {
			t.Errorf("pack(%s) says it is exact", fmtLease(&l))
		}
	}
	for _, l := range append([]Lease{normal}, odd...) {
		mustAdmit(t, tb, l)
	}
	expectAdmitted(t, tb, append([]Lease{normal}, odd...)...)
	if got, ok := tb.LookupIP(netip.MustParseAddr("10.5.3.3")); !ok || got != mapped {
		t.Errorf("LookupIP = %s, %v; want %s", fmtLease(&got), ok, fmtLease(&mapped))
	}
	if got, ok := tb.LookupMAC(bigVNI.VtepMAC); !ok || got != bigVNI {
		t.Errorf("LookupMAC = %s, %v; want %s", fmtLease(&got), ok, fmtLease(&bigVNI))
	}
	if n := testing.AllocsPerRun(100, func() { tb.LookupIP(netip.MustParseAddr("10.5.2.2")) }); n != 0 {
		t.Errorf("LookupIP of an odd lease allocates %v times", n)
	}
	// An odd lease replaced by one that packs, and removed: nothing stays.
	fixed := mkLease("10.5.2.0/24", 2, 2)
	fixed.ModRevision = 9
	mustAdmit(t, tb, fixed)
	tremove(tb, mapped.Key)
	expectAdmitted(t, tb, normal, fixed, bigVNI, noPublic)
	tb.mu.RLock()
	n := len(tb.odd)
	tb.mu.RUnlock()
	if n != 2 {
		t.Errorf("%d odd leases kept, want 2", n)
	}
}

func TestMACKey(t *testing.T) {
	m := MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0xfe}
	if k := macKey(m); k != 0x0242ac1100fe {
		t.Errorf("macKey(%s) = %x", m, k)
	}
	if macKey(MAC{0x02}) == macKey(MAC{0, 0, 0, 0, 0, 0x02}) {
		t.Error("macKey loses the order of the bytes")
	}
}

// TestTableDirectAndHashedSubnets: in a network with few subnets of a
// length, leases of it are found by number; a lease outside the network
// (the sync never admits one, put does) or shorter than it is hashed, and
// found all the same.
func TestTableDirectAndHashedSubnets(t *testing.T) {
	tb := NewTable(testConfig()) // 10.5.0.0/16
	in := []Lease{mkLease("10.5.0.0/24", 1, 1), mkLease("10.5.255.0/24", 2, 2), mkLease("10.5.7.128/25", 3, 3), mkLease("10.5.9.9/32", 4, 4)}
	out := []Lease{mkLease("10.6.1.0/24", 5, 5), mkLease("192.0.2.0/25", 6, 6), mkLease("172.16.0.0/12", 7, 7), mkLease("0.0.0.0/32", 8, 8)}
	for _, l := range append(slices.Clone(in), out...) {
		mustAdmit(t, tb, l)
	}
	expectAdmitted(t, tb, append(slices.Clone(in), out...)...)
	tb.mu.RLock()
	for _, li := range tb.lengths {
		direct := map[int]int{24: 2, 25: 1, 32: 1}
		switch li.bits {
		case 24, 25, 32:
			if li.direct == nil || li.nDirect != direct[li.bits] || li.bySubnet.len() != 1 {
				t.Errorf("/%d: %d direct, %d hashed (direct %v)", li.bits, li.nDirect, li.bySubnet.len(), li.direct != nil)
			}
		case 12:
			if li.direct != nil || li.bySubnet.len() != 1 {
				t.Errorf("/12 is indexed directly in a /16")
			}
		}
	}
	tb.mu.RUnlock()
	for _, a := range []string{"10.5.8.1", "10.6.2.1", "192.0.2.200", "0.0.0.1", "10.4.255.255"} {
		if l, ok := tb.LookupIP(netip.MustParseAddr(a)); ok {
			t.Errorf("LookupIP(%s) = %s", a, fmtLease(&l))
		}
	}
	for _, l := range append(slices.Clone(in), out...) {
		tremove(tb, l.Key)
		checkInvariants(t, tb)
	}
	if tb.Len() != 0 || len(tb.lengths) != 0 {
		t.Errorf("%d leases, %d length indexes left", tb.Len(), len(tb.lengths))
	}

	// A network of many subnets of a length hashes them all.
	cfg := testConfig()
	cfg.Network = netip.MustParsePrefix("10.0.0.0/8")
	tb = NewTable(cfg)
	mustAdmit(t, tb, mkLease("10.1.2.4/30", 1, 1))
	mustAdmit(t, tb, mkLease("10.1.3.0/24", 2, 2))
	checkInvariants(t, tb)
	if tb.lengths[0].direct != nil || tb.lengths[1].direct == nil {
		t.Errorf("a /8 of /30s is indexed directly, or its /24s are not")
	}
}
