package store

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

const testPrefix = "/coreos.com/network"

var testSubnetsPrefix = SubnetsPrefix(testPrefix)

// testConfig is the overlay most tests use: flannel's defaults for a /16.
func testConfig() Config {
	return Config{
		Network:   netip.MustParsePrefix("10.5.0.0/16"),
		SubnetLen: 24,
		SubnetMin: netip.MustParseAddr("10.5.1.0"),
		SubnetMax: netip.MustParseAddr("10.5.255.0"),
		Backend:   Backend{Type: "vxlan", VNI: 1, Port: 8472},
	}
}

// mkLease makes a valid lease for subnet whose public IP and VTEP MAC are
// derived from id, created and last modified at rev.
func mkLease(subnet string, id byte, rev int64) Lease {
	p := netip.MustParsePrefix(subnet)
	return Lease{
		Key:            testSubnetsPrefix + SubnetKey(p),
		Subnet:         p,
		PublicIP:       netip.AddrFrom4([4]byte{192, 0, 2, id}),
		VtepMAC:        MAC{0x02, 0, 0, 0, 0, id},
		VNI:            1,
		CreateRevision: rev,
		ModRevision:    rev,
	}
}

// The table's mutators are called with t.mu held, as sync.go does.

func tput(tb *Table, l Lease) ([]Change, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.put(l)
}

func tremove(tb *Table, key string) []Change {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.remove(key)
}

func treplace(tb *Table, leases []Lease) ([]Change, map[string]error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.replaceAll(leases)
}

func mustAdmit(t *testing.T, tb *Table, l Lease) []Change {
	t.Helper()
	changes, err := tput(tb, l)
	if err != nil {
		t.Fatalf("put %s: rejected: %v", l.Key, err)
	}
	return changes
}

func mustReject(t *testing.T, tb *Table, l Lease, says string) []Change {
	t.Helper()
	changes, err := tput(tb, l)
	if err == nil {
		t.Fatalf("put %s (%s): admitted, want it rejected", l.Key, l)
	}
	if !strings.Contains(err.Error(), says) {
		t.Errorf("put %s: rejection %q does not say %q", l.Key, err, says)
	}
	return changes
}

func added(l Lease) Change      { return Change{New: &l} }
func removed(l Lease) Change    { return Change{Old: &l} }
func updated(o, n Lease) Change { return Change{Old: &o, New: &n} }

func fmtLease(l *Lease) string {
	if l == nil {
		return "nil"
	}
	v6 := ""
	if l.IPv6Subnet.IsValid() || l.PublicIPv6.IsValid() || l.VtepMACv6 != (MAC{}) {
		v6 = fmt.Sprintf(" %s %s %s", l.IPv6Subnet, l.PublicIPv6, l.VtepMACv6)
	}
	return fmt.Sprintf("{%s %s %s %s%s vni=%d c=%d m=%d e=%d}", strings.TrimPrefix(l.Key, testSubnetsPrefix),
		l.Subnet, l.PublicIP, l.VtepMAC, v6, l.VNI, l.CreateRevision, l.ModRevision, l.EtcdLease)
}

func fmtChange(c Change) string { return fmtLease(c.Old) + " -> " + fmtLease(c.New) }

func fmtChanges(cs []Change) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = fmtChange(c)
	}
	return out
}

func expectChanges(t *testing.T, got []Change, want ...Change) {
	t.Helper()
	g, w := fmtChanges(got), fmtChanges(want)
	if !slices.Equal(g, w) {
		t.Errorf("changes:\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), strings.Join(w, "\n  "))
	}
}

// expectChangeSet is expectChanges for changes whose relative order is not
// specified (several of the same kind from one re-list).
func expectChangeSet(t *testing.T, got []Change, want ...Change) {
	t.Helper()
	g, w := fmtChanges(got), fmtChanges(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("changes (any order):\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), strings.Join(w, "\n  "))
	}
}

func expectAdmitted(t *testing.T, tb *Table, want ...Lease) {
	t.Helper()
	got := tb.Leases()
	want = sortedBySubnet(want) // a copy: the caller's slice stays as it was
	if !slices.Equal(got, want) {
		gs, ws := make([]string, len(got)), make([]string, len(want))
		for i := range got {
			gs[i] = fmtLease(&got[i])
		}
		for i := range want {
			ws[i] = fmtLease(&want[i])
		}
		t.Errorf("admitted leases:\n  %s\nwant:\n  %s", strings.Join(gs, "\n  "), strings.Join(ws, "\n  "))
	}
	checkInvariants(t, tb)
}

// checkInvariants checks the table's indexes against each other and the
// rules: no two admitted leases overlap or share a MAC, and every rejected
// lease still conflicts with an admitted one (none waits for nothing).
func checkInvariants(t *testing.T, tb *Table) {
	t.Helper()
	tb.mu.RLock()
	defer tb.mu.RUnlock()
	nMACs := 0
	for _, s := range tb.byKey {
		nMACs += len(macs(tb.at(s)))
	}
	if tb.byMAC.len() != nMACs {
		t.Errorf("%d MACs indexed for %d leases, which have %d", tb.byMAC.len(), len(tb.byKey), nMACs)
	}
	checkSlotIndex(t, "MAC", &tb.byMAC, false)
	for fp, s := range tb.byMAC.all() {
		r := tb.slots[s]
		if r.key == "" || !slices.ContainsFunc(macs(tb.at(s)), func(m MAC) bool { return macFingerprint(m, tb.macMul) == fp }) {
			t.Errorf("MAC index entry %x names slot %d (%s, %s)", fp, s, r.key, r.mac)
		}
	}
	if tb.slots6 != nil && len(tb.slots6) != len(tb.slots) {
		t.Errorf("%d IPv6 records for %d slots", len(tb.slots6), len(tb.slots))
	}
	n := 0
	for i := range tb.lengths {
		li := &tb.lengths[i]
		if li.len() == 0 {
			t.Errorf("empty index for /%d", li.bits)
		}
		if li.mask != prefixMask(li.bits) {
			t.Errorf("index /%d has mask %08x", li.bits, li.mask)
		}
		if i > 0 && tb.lengths[i-1].bits <= li.bits {
			t.Errorf("prefix length indexes out of order: /%d before /%d", tb.lengths[i-1].bits, li.bits)
		}
		checkLengthIndex(t, li, tb.cfg.Network)
		for start, s := range li.all() {
			n++
			l := tb.at(s)
			if ks, ok := tb.byKey[l.Key]; !ok || ks != s || l.Subnet.Bits() != li.bits || u32(l.Subnet.Addr()) != start {
				t.Errorf("stale /%d index entry %s", li.bits, fmtLease(&l))
			}
		}
	}
	n6 := 0
	for i := range tb.lengths6 {
		li := &tb.lengths6[i]
		if li.len() == 0 {
			t.Errorf("empty index for IPv6 /%d", li.bits)
		}
		if m := mask128(li.bits); li.hiMask != m.hi || li.loMask != m.lo {
			t.Errorf("IPv6 index /%d has mask %x:%x", li.bits, li.hiMask, li.loMask)
		}
		if i > 0 && tb.lengths6[i-1].bits <= li.bits {
			t.Errorf("IPv6 prefix length indexes out of order: /%d before /%d", tb.lengths6[i-1].bits, li.bits)
		}
		checkLengthIndex6(t, tb, li)
		for s := range li.all() {
			n6++
			l := tb.at(s)
			if ks, ok := tb.byKey[l.Key]; !ok || ks != s || l.IPv6Subnet.Bits() != li.bits {
				t.Errorf("stale IPv6 /%d index entry %s", li.bits, fmtLease(&l))
			}
		}
	}
	n4, want6 := 0, 0
	for _, s := range tb.byKey {
		l := tb.at(s)
		if l.Subnet.IsValid() {
			n4++
		}
		if l.IPv6Subnet.IsValid() {
			want6++
		}
	}
	if n != n4 || n6 != want6 {
		t.Errorf("%d IPv4 and %d IPv6 subnets indexed for %d leases, which have %d and %d", n, n6, len(tb.byKey), n4, want6)
	}
	// Every slot is either a lease's, named by byKey, or free and zero.
	used := make(map[int32]bool, len(tb.byKey))
	for _, s := range tb.byKey {
		if used[s] {
			t.Errorf("slot %d holds two keys' leases", s)
		}
		used[s] = true
	}
	for _, s := range tb.free {
		if used[s] || tb.slots[s] != (record{}) || tb.slots6 != nil && tb.slots6[s] != (record6{}) {
			t.Errorf("free slot %d is in use", s)
		}
		used[s] = true
	}
	if len(used) != len(tb.slots) {
		t.Errorf("%d slots, %d of them used or free", len(tb.slots), len(used))
	}
	// A lease is packed in its slot, or kept whole in odd if it does not
	// pack.
	for s, l := range tb.odd {
		if r := tb.slots[s]; !r.odd || r.key != l.Key || tb.byKey[l.Key] != s {
			t.Errorf("odd lease %s is not in its slot %d", fmtLease(&l), s)
		}
		if _, _, exact := tb.pack(l); exact {
			t.Errorf("odd lease %s packs", fmtLease(&l))
		}
	}
	for _, s := range tb.byKey {
		if r := tb.slots[s]; r.odd {
			if _, ok := tb.odd[s]; !ok {
				t.Errorf("slot %d (%s) is odd, but its lease is not kept", s, r.key)
			}
		}
	}
	admitted := make([]*Lease, 0, len(tb.byKey))
	for key, s := range tb.byKey {
		l := tb.at(s)
		if l.Key != key {
			t.Errorf("lease %s stored under key %s", fmtLease(&l), key)
		}
		for _, m := range macs(l) {
			if ms, ok := tb.macSlot(m); !ok || ms != s {
				t.Errorf("MAC index does not point at %s for %s", fmtLease(&l), m)
			}
		}
		if _, ok := tb.rejected[key]; ok {
			t.Errorf("key %s both admitted and rejected", key)
		}
		admitted = append(admitted, &l)
	}
	for i, a := range admitted {
		for _, b := range admitted[i+1:] {
			if a.Subnet.Overlaps(b.Subnet) || a.IPv6Subnet.Overlaps(b.IPv6Subnet) {
				t.Errorf("admitted leases overlap: %s and %s", fmtLease(a), fmtLease(b))
			}
			for _, m := range macs(*a) {
				if slices.Contains(macs(*b), m) {
					t.Errorf("admitted leases share a MAC: %s and %s", fmtLease(a), fmtLease(b))
				}
			}
		}
	}
	for key, r := range tb.rejected {
		if r.lease.Key != key || r.reason == nil {
			t.Errorf("bad rejected entry %s: %+v", key, r)
		}
		if tb.conflict(r.lease) == nil {
			t.Errorf("lease %s waits although nothing conflicts with it any more", fmtLease(&r.lease))
		}
	}
	// Lookups outside the lock see the same thing; do them after.
	defer func() {
		for _, l := range admitted {
			var ends []netip.Addr
			if l.Subnet.IsValid() {
				first := l.Subnet.Addr()
				ends = append(ends, first, addrFrom(u32(first)|^prefixMask(l.Subnet.Bits())))
			}
			if l.IPv6Subnet.IsValid() {
				first := u128Of(l.IPv6Subnet.Addr())
				ends = append(ends, first.addr(), first.or(mask128(l.IPv6Subnet.Bits()).not()).addr())
			}
			for _, a := range ends {
				if got, ok := tb.LookupIP(a); !ok || got != *l {
					t.Errorf("LookupIP(%s) = %s, %v; want %s", a, fmtLease(&got), ok, fmtLease(l))
				}
			}
			for _, m := range macs(*l) {
				if got, ok := tb.LookupMAC(m); !ok || got != *l {
					t.Errorf("LookupMAC(%s) = %s, %v; want %s", m, fmtLease(&got), ok, fmtLease(l))
				}
			}
			if got, ok := tb.LookupKey(l.Key); !ok || got != *l {
				t.Errorf("LookupKey(%s) = %s, %v; want %s", l.Key, fmtLease(&got), ok, fmtLease(l))
			}
		}
	}()
}

func TestTableEmpty(t *testing.T) {
	tb := NewTable(testConfig())
	if _, ok := tb.LookupIP(netip.MustParseAddr("10.5.1.1")); ok {
		t.Error("LookupIP found a lease in an empty table")
	}
	if _, ok := tb.LookupMAC(MAC{2, 0, 0, 0, 0, 1}); ok {
		t.Error("LookupMAC found a lease in an empty table")
	}
	if _, ok := tb.LookupKey(testSubnetsPrefix + "10.5.1.0-24"); ok {
		t.Error("LookupKey found a lease in an empty table")
	}
	if n := tb.Len(); n != 0 {
		t.Errorf("Len = %d", n)
	}
	if l := tb.Leases(); len(l) != 0 {
		t.Errorf("Leases = %v", l)
	}
	if s := tb.Stats(); s != (TableStats{}) {
		t.Errorf("Stats = %+v", s)
	}
	select {
	case <-tb.Synced():
		t.Error("a new table says it is synced")
	default:
	}
	if c := tremove(tb, testSubnetsPrefix+"10.5.1.0-24"); c != nil {
		t.Errorf("removing an unknown key changed %v", fmtChanges(c))
	}
}

func TestTableLookupMixedLengths(t *testing.T) {
	tb := NewTable(testConfig())
	leases := []Lease{
		mkLease("10.5.1.0/24", 1, 10),
		mkLease("10.5.2.0/26", 2, 11),
		mkLease("10.5.2.128/25", 3, 12),
		mkLease("10.5.4.0/22", 4, 13),
		mkLease("10.5.8.4/30", 5, 14),
		mkLease("10.5.9.9/32", 6, 15),
		mkLease("10.5.64.0/18", 7, 16),
	}
	for _, l := range leases {
		expectChanges(t, mustAdmit(t, tb, l), added(l))
	}
	lookups := map[string]int{ // address: index into leases, -1 for none
		"10.5.1.0": 0, "10.5.1.1": 0, "10.5.1.255": 0,
		"10.5.2.0": 1, "10.5.2.63": 1, "10.5.2.64": -1, "10.5.2.127": -1,
		"10.5.2.128": 2, "10.5.2.255": 2,
		"10.5.3.0": -1, "10.5.3.255": -1,
		"10.5.4.0": 3, "10.5.5.17": 3, "10.5.7.255": 3,
		"10.5.8.3": -1, "10.5.8.4": 4, "10.5.8.7": 4, "10.5.8.8": -1,
		"10.5.9.8": -1, "10.5.9.9": 5, "10.5.9.10": -1,
		"10.5.64.0": 6, "10.5.100.100": 6, "10.5.127.255": 6, "10.5.128.0": -1,
		"10.5.0.0": -1, "10.5.0.1": -1, "10.6.1.1": -1, "10.4.1.1": -1, "0.0.0.0": -1, "255.255.255.255": -1,
	}
	for s, i := range lookups {
		got, ok := tb.LookupIP(netip.MustParseAddr(s))
		switch {
		case i < 0 && ok:
			t.Errorf("LookupIP(%s) = %s, want none", s, fmtLease(&got))
		case i >= 0 && (!ok || got != leases[i]):
			t.Errorf("LookupIP(%s) = %s, %v; want %s", s, fmtLease(&got), ok, fmtLease(&leases[i]))
		}
	}
	// Not IPv4: never found, even when the IPv4 address inside would be.
	for _, s := range []string{"::ffff:10.5.1.1", "fd00::1", "::"} {
		if got, ok := tb.LookupIP(netip.MustParseAddr(s)); ok {
			t.Errorf("LookupIP(%s) = %s, want none", s, fmtLease(&got))
		}
	}
	if got, ok := tb.LookupIP(netip.Addr{}); ok {
		t.Errorf("LookupIP(zero Addr) = %s, want none", fmtLease(&got))
	}
	expectAdmitted(t, tb, leases...)

	// Removing the only lease of a length drops that length's index.
	expectChanges(t, tremove(tb, leases[5].Key), removed(leases[5]))
	if _, ok := tb.LookupIP(netip.MustParseAddr("10.5.9.9")); ok {
		t.Error("LookupIP finds a removed /32")
	}
	tb.mu.RLock()
	var bits []int
	for _, li := range tb.lengths {
		bits = append(bits, li.bits)
	}
	tb.mu.RUnlock()
	if want := []int{30, 26, 25, 24, 22, 18}; !slices.Equal(bits, want) {
		t.Errorf("indexed prefix lengths %v, want %v", bits, want)
	}
	expectAdmitted(t, tb, slices.Delete(slices.Clone(leases), 5, 6)...)
}

func TestTableLongestPrefixIndexOrder(t *testing.T) {
	// Admitted leases never overlap, so the longest-prefix rule cannot be
	// seen through put. It is what LookupIP does with its index, though, and
	// the index must keep the longest length first however leases arrive.
	tb := NewTable(testConfig())
	for i, s := range []string{"10.5.16.0/20", "10.5.1.0/24", "10.5.2.0/28", "10.5.3.0/26", "10.5.4.0/23", "10.5.6.0/25", "10.5.128.0/17"} {
		mustAdmit(t, tb, mkLease(s, byte(i+1), int64(i+1)))
	}
	checkInvariants(t, tb)
	// Plant an overlapping /24 inside the /20 behind put's back: the
	// lookup must answer with the /24.
	inner := mkLease("10.5.17.0/24", 99, 99)
	tb.mu.Lock()
	tb.index(Lease{Key: inner.Key, Subnet: inner.Subnet, PublicIP: inner.PublicIP, VtepMAC: inner.VtepMAC, VNI: 1, CreateRevision: 99, ModRevision: 99})
	tb.mu.Unlock()
	if got, ok := tb.LookupIP(netip.MustParseAddr("10.5.17.5")); !ok || got != inner {
		t.Errorf("LookupIP(10.5.17.5) = %s, %v; want the longer %s", fmtLease(&got), ok, fmtLease(&inner))
	}
	if got, ok := tb.LookupIP(netip.MustParseAddr("10.5.18.5")); !ok || got.Subnet != netip.MustParsePrefix("10.5.16.0/20") {
		t.Errorf("LookupIP(10.5.18.5) = %s, %v; want the /20", fmtLease(&got), ok)
	}
}

func TestTableOverlapRejected(t *testing.T) {
	tests := []struct {
		name          string
		first, second string
	}{
		{"same subnet", "10.5.2.0/24", "10.5.2.0/24"},
		{"longer inside shorter", "10.5.2.0/24", "10.5.2.64/26"},
		{"longer at the start of shorter", "10.5.2.0/24", "10.5.2.0/25"},
		{"longer at the end of shorter", "10.5.2.0/24", "10.5.2.255/32"},
		{"shorter around longer", "10.5.2.64/26", "10.5.2.0/24"},
		{"much shorter around longer", "10.5.2.64/26", "10.5.0.0/18"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := NewTable(testConfig())
			a := mkLease(tt.first, 1, 10)
			b := mkLease(tt.second, 2, 20)
			if a.Key == b.Key {
				// The same subnet under another key, as a dual-stack
				// flanneld would write it.
				b.Key += "&fd00:10::-64"
			}
			// Unrelated leases on both sides must not confuse the check.
			mustAdmit(t, tb, mkLease("10.5.100.0/24", 3, 5))
			mustAdmit(t, tb, mkLease("10.5.201.128/25", 4, 6))
			mustAdmit(t, tb, a)
			expectChanges(t, mustReject(t, tb, b, "overlaps "+a.Subnet.String()+" of "+a.Key))
			if s := tb.Stats(); s.Leases != 3 || s.Rejected != 1 {
				t.Errorf("Stats = %+v, want 3 leases and 1 rejected", s)
			}
			if _, ok := tb.LookupKey(b.Key); ok {
				t.Error("LookupKey finds the rejected lease")
			}
			if _, ok := tb.LookupMAC(b.VtepMAC); ok {
				t.Error("LookupMAC finds the rejected lease")
			}
			got, ok := tb.LookupIP(b.Subnet.Addr())
			if a.Subnet.Contains(b.Subnet.Addr()) && (!ok || got != a) {
				t.Errorf("LookupIP(%s) = %s, %v; want %s", b.Subnet.Addr(), fmtLease(&got), ok, fmtLease(&a))
			}
			checkInvariants(t, tb)

			// The winner goes: the waiting lease is admitted.
			expectChanges(t, tremove(tb, a.Key), removed(a), added(b))
			if s := tb.Stats(); s.Leases != 3 || s.Rejected != 0 {
				t.Errorf("Stats = %+v, want 3 leases and 0 rejected", s)
			}
			checkInvariants(t, tb)
		})
	}
}

func TestTableWholeNetworkLease(t *testing.T) {
	// A lease for the whole network overlaps every other.
	tb := NewTable(testConfig())
	a := mkLease("10.5.200.0/24", 1, 10)
	b := mkLease("10.5.0.0/16", 2, 20)
	mustAdmit(t, tb, a)
	mustReject(t, tb, b, "overlaps 10.5.200.0/24")
	expectChanges(t, tremove(tb, a.Key), removed(a), added(b))
	c := mkLease("10.5.7.0/24", 3, 30)
	mustReject(t, tb, c, "overlaps 10.5.0.0/16")
	if got, ok := tb.LookupIP(netip.MustParseAddr("10.5.7.7")); !ok || got != b {
		t.Errorf("LookupIP = %s, %v; want %s", fmtLease(&got), ok, fmtLease(&b))
	}
	checkInvariants(t, tb)
}

func TestTableDuplicateMACRejected(t *testing.T) {
	tb := NewTable(testConfig())
	a := mkLease("10.5.1.0/24", 1, 10)
	b := mkLease("10.5.2.0/24", 1, 20) // same MAC and public IP
	c := mkLease("10.5.3.0/24", 3, 30)
	c.VtepMAC = a.VtepMAC // same MAC, another host
	mustAdmit(t, tb, a)
	expectChanges(t, mustReject(t, tb, b, "VtepMAC "+a.VtepMAC.String()+" is already used by "+a.Key))
	expectChanges(t, mustReject(t, tb, c, "VtepMAC "+a.VtepMAC.String()))
	if got, ok := tb.LookupMAC(a.VtepMAC); !ok || got != a {
		t.Errorf("LookupMAC = %s, %v; want %s", fmtLease(&got), ok, fmtLease(&a))
	}
	if _, ok := tb.LookupIP(netip.MustParseAddr("10.5.2.1")); ok {
		t.Error("LookupIP finds a rejected lease")
	}
	expectAdmitted(t, tb, a)
	if s := tb.Stats(); s.Rejected != 2 {
		t.Errorf("Stats = %+v, want 2 rejected", s)
	}

	// The winner takes a new MAC: the older waiting lease (b) is admitted,
	// and c, which still shares b's MAC, keeps waiting.
	a2 := a
	a2.VtepMAC, a2.ModRevision = MAC{2, 0, 0, 0, 0, 0xaa}, 40
	expectChanges(t, mustAdmit(t, tb, a2), updated(a, a2), added(b))
	expectAdmitted(t, tb, a2, b)
	if _, ok := tb.LookupMAC(MAC{2, 0, 0, 0, 0, 0xaa}); !ok {
		t.Error("LookupMAC does not find the new MAC")
	}
	if got, ok := tb.LookupMAC(a.VtepMAC); !ok || got != b {
		t.Errorf("LookupMAC(old MAC) = %s, %v; want %s", fmtLease(&got), ok, fmtLease(&b))
	}

	// c fixes its MAC: admitted at once.
	c2 := c
	c2.VtepMAC, c2.ModRevision = MAC{2, 0, 0, 0, 0, 3}, 50
	expectChanges(t, mustAdmit(t, tb, c2), added(c2))
	expectAdmitted(t, tb, a2, b, c2)
	if s := tb.Stats(); s.Rejected != 0 || s.Leases != 3 {
		t.Errorf("Stats = %+v", s)
	}
}

func TestTableReadmitWhenWinnerMoves(t *testing.T) {
	// The winner changes subnet (put under the same key with another
	// subnet): the lease that overlapped its old subnet is admitted.
	tb := NewTable(testConfig())
	a := mkLease("10.5.2.0/24", 1, 10)
	b := mkLease("10.5.2.0/25", 2, 20)
	mustAdmit(t, tb, a)
	mustReject(t, tb, b, "overlaps")
	a2 := a
	a2.Subnet, a2.ModRevision = netip.MustParsePrefix("10.5.3.0/24"), 30
	expectChanges(t, mustAdmit(t, tb, a2), updated(a, a2), added(b))
	expectAdmitted(t, tb, a2, b)
	if got, ok := tb.LookupIP(netip.MustParseAddr("10.5.2.200")); ok {
		t.Errorf("LookupIP(10.5.2.200) = %s; the old subnet should be gone", fmtLease(&got))
	}
}

func TestTableReadmitOldestFirst(t *testing.T) {
	tb := NewTable(testConfig())
	a := mkLease("10.5.2.0/24", 1, 10)
	b := mkLease("10.5.2.0/25", 2, 30) // newer
	c := mkLease("10.5.2.0/26", 3, 20) // older; overlaps b too
	d := mkLease("10.5.2.128/25", 4, 40)
	mustAdmit(t, tb, a)
	mustReject(t, tb, b, "overlaps")
	mustReject(t, tb, c, "overlaps")
	mustReject(t, tb, d, "overlaps")
	// a goes: c (older than b) is admitted, b now overlaps c, d is free.
	expectChanges(t, tremove(tb, a.Key), removed(a), added(c), added(d))
	expectAdmitted(t, tb, c, d)
	// c goes: b is admitted.
	expectChanges(t, tremove(tb, c.Key), removed(c), added(b))
	expectAdmitted(t, tb, b, d)
	if s := tb.Stats(); s.Rejected != 0 {
		t.Errorf("Stats = %+v, want none rejected", s)
	}
}

func TestTableUpdates(t *testing.T) {
	tb := NewTable(testConfig())
	a := mkLease("10.5.1.0/24", 1, 10)
	b := mkLease("10.5.2.0/24", 2, 11)
	expectChanges(t, mustAdmit(t, tb, a), added(a))
	expectChanges(t, mustAdmit(t, tb, b), added(b))

	// Same target, new revision and etcd lease: an update.
	a2 := a
	a2.ModRevision, a2.EtcdLease = 20, 77
	expectChanges(t, mustAdmit(t, tb, a2), updated(a, a2))
	// New public IP.
	a3 := a2
	a3.PublicIP, a3.ModRevision = netip.MustParseAddr("198.51.100.1"), 21
	expectChanges(t, mustAdmit(t, tb, a3), updated(a2, a3))
	if got, _ := tb.LookupIP(netip.MustParseAddr("10.5.1.9")); got.PublicIP != a3.PublicIP {
		t.Errorf("LookupIP after update = %s", fmtLease(&got))
	}
	expectAdmitted(t, tb, a3, b)

	// b, the newer lease, takes a's MAC: b's new value waits for a, and its
	// old value is withdrawn.
	b2 := b
	b2.VtepMAC, b2.ModRevision = a3.VtepMAC, 22
	expectChanges(t, mustReject(t, tb, b2, "VtepMAC "+a3.VtepMAC.String()+" is already used by "+a3.Key), removed(b))
	expectAdmitted(t, tb, a3)
	if _, ok := tb.LookupIP(netip.MustParseAddr("10.5.2.9")); ok {
		t.Error("LookupIP still finds a lease that was replaced by a rejected value")
	}
	if _, ok := tb.LookupMAC(b.VtepMAC); ok {
		t.Error("LookupMAC still finds the old MAC of a lease that was replaced by a rejected value")
	}
	// When a goes, b's current value is admitted.
	expectChanges(t, tremove(tb, a3.Key), removed(a3), added(b2))
	expectAdmitted(t, tb, b2)

	// Removing a rejected lease forgets it: it does not come back later.
	c := mkLease("10.5.2.0/25", 3, 30)
	mustReject(t, tb, c, "overlaps")
	expectChanges(t, tremove(tb, c.Key))
	if s := tb.Stats(); s.Rejected != 0 {
		t.Errorf("Stats after removing a rejected lease = %+v", s)
	}
	expectChanges(t, tremove(tb, b2.Key), removed(b2))
	expectAdmitted(t, tb)
}

func TestTableReplaceAllOldestWins(t *testing.T) {
	// b (oldest) wins its subnet; a overlaps b and waits; c shares a's MAC
	// but a is not admitted, so c is.
	b := mkLease("10.5.2.0/24", 2, 3)
	a := mkLease("10.5.2.128/25", 1, 5)
	c := mkLease("10.5.7.0/24", 3, 7)
	c.VtepMAC = a.VtepMAC
	d := mkLease("10.5.8.0/24", 4, 9)
	d.VtepMAC = b.VtepMAC // loses to b
	in := []Lease{a, b, c, d}
	perm := func(yield func([]Lease) bool) {
		var rec func(k int) bool
		rec = func(k int) bool {
			if k == len(in) {
				return yield(slices.Clone(in))
			}
			for i := k; i < len(in); i++ {
				in[k], in[i] = in[i], in[k]
				if !rec(k + 1) {
					return false
				}
				in[k], in[i] = in[i], in[k]
			}
			return true
		}
		rec(0)
	}
	n := 0
	for order := range perm {
		n++
		tb := NewTable(testConfig())
		changes, rejected := treplace(tb, order)
		expectChangeSet(t, changes, added(b), added(c))
		if len(rejected) != 2 || rejected[a.Key] == nil || rejected[d.Key] == nil {
			t.Errorf("order %v: rejected %v, want %s and %s", keysOf(order), rejected, a.Key, d.Key)
		} else {
			if !strings.Contains(rejected[a.Key].Error(), "overlaps 10.5.2.0/24") {
				t.Errorf("rejection of a: %v", rejected[a.Key])
			}
			if !strings.Contains(rejected[d.Key].Error(), "VtepMAC") {
				t.Errorf("rejection of d: %v", rejected[d.Key])
			}
		}
		expectAdmitted(t, tb, b, c)
		if s := tb.Stats(); s.Rejected != 2 {
			t.Errorf("Stats = %+v, want 2 rejected", s)
		}
		// The rejected leases wait: when b goes, admission is decided as a
		// fresh list of a, c, d would decide it: a (older than c) is
		// admitted and pushes out c, which shares its MAC; d fits now.
		expectChangeSet(t, tremove(tb, b.Key), removed(b), removed(c), added(a), added(d))
		expectAdmitted(t, tb, a, d)
	}
	if n != 24 {
		t.Fatalf("tried %d orders", n)
	}
}

func keysOf(ls []Lease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, strings.TrimPrefix(l.Key, testSubnetsPrefix))
	}
	return out
}

func TestTableReplaceAllDiff(t *testing.T) {
	tb := NewTable(testConfig())
	var gone, kept, changed []Lease
	for i := range 5 {
		gone = append(gone, mkLease(fmt.Sprintf("10.5.%d.0/24", 10+i), byte(10+i), int64(10+i)))
		kept = append(kept, mkLease(fmt.Sprintf("10.5.%d.0/24", 20+i), byte(20+i), int64(20+i)))
		changed = append(changed, mkLease(fmt.Sprintf("10.5.%d.0/24", 30+i), byte(30+i), int64(30+i)))
	}
	waiting := mkLease("10.5.20.0/25", 99, 50) // overlaps kept[0]
	initial := slices.Concat(gone, kept, changed, []Lease{waiting})
	changes, rejected := treplace(tb, slices.Clone(initial))
	if len(changes) != 15 || len(rejected) != 1 || rejected[waiting.Key] == nil {
		t.Fatalf("initial load: %d changes, rejected %v", len(changes), rejected)
	}
	for _, c := range changes {
		if c.Old != nil || c.New == nil {
			t.Errorf("initial load change %s is not an addition", fmtChange(c))
		}
	}

	var fresh, want []Change
	var list []Lease
	for _, l := range gone {
		want = append(want, removed(l))
	}
	for i, l := range changed {
		n := l
		n.ModRevision = 60 + int64(i)
		if i%2 == 0 {
			n.PublicIP = netip.MustParseAddr("198.51.100.7")
		} else {
			n.VtepMAC[0] = 0x0a
		}
		list = append(list, n)
		want = append(want, updated(l, n))
	}
	for i := range 5 {
		l := mkLease(fmt.Sprintf("10.5.%d.0/24", 40+i), byte(40+i), int64(70+i))
		list = append(list, l)
		fresh = append(fresh, added(l))
	}
	want = append(want, fresh...)
	list = append(list, kept...)
	// kept[0] stays, so the lease overlapping it keeps waiting.
	list = append(list, waiting)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })

	changes, rejected = treplace(tb, list)
	if len(rejected) != 1 || rejected[waiting.Key] == nil {
		t.Errorf("rejected %v, want only %s", rejected, waiting.Key)
	}
	expectChangeSet(t, changes, want...)
	// Removals, then updates, then additions.
	for i := 1; i < len(changes); i++ {
		if rank(changes[i-1]) > rank(changes[i]) {
			t.Fatalf("changes out of order at %d:\n  %s", i, strings.Join(fmtChanges(changes), "\n  "))
		}
	}
	if rank(removed(gone[0])) != 0 || rank(updated(gone[0], gone[0])) != 1 || rank(added(gone[0])) != 2 {
		t.Fatal("rank does not order removals, updates, additions")
	}
	expectAdmitted(t, tb, slices.Concat(kept, leasesOf(want[5:]))...)

	// The same list again changes nothing.
	changes, _ = treplace(tb, slices.Clone(list))
	expectChanges(t, changes)

	// kept[0] vanishes: the waiting lease is admitted by the re-list.
	without := slices.DeleteFunc(slices.Clone(list), func(l Lease) bool { return l.Key == kept[0].Key })
	changes, rejected = treplace(tb, without)
	if len(rejected) != 0 {
		t.Errorf("rejected %v", rejected)
	}
	expectChanges(t, changes, removed(kept[0]), added(waiting))
	checkInvariants(t, tb)
}

func leasesOf(cs []Change) []Lease {
	var out []Lease
	for _, c := range cs {
		if c.New != nil {
			out = append(out, *c.New)
		}
	}
	return out
}

func TestTableReplaceAllFlipsToOlder(t *testing.T) {
	// The table admitted b, not knowing of a; a re-list shows a, created
	// earlier and overlapping b. a wins; b's removal is reported first, so an
	// observer never holds two leases for one address.
	tb := NewTable(testConfig())
	b := mkLease("10.5.2.0/25", 2, 20)
	mustAdmit(t, tb, b)
	a := mkLease("10.5.2.0/24", 1, 10)
	changes, rejected := treplace(tb, []Lease{b, a})
	expectChanges(t, changes, removed(b), added(a))
	if rejected[b.Key] == nil || len(rejected) != 1 {
		t.Errorf("rejected = %v", rejected)
	}
	expectAdmitted(t, tb, a)
	// ... and b waits for a.
	expectChanges(t, tremove(tb, a.Key), removed(a), added(b))
}

// TestTableWatchAgreesWithRelist is the doc's promise that "a re-list
// decides conflicts the same way the watch did", and the Lease doc's rule
// that the earlier-created of two conflicting leases is believed.
//
// It once failed: put never displaced an admitted lease, so once the older of
// two conflicting leases had to wait for a third, the newer kept its place,
// while a re-list admitted the older, and a host that watched and one that
// listed routed the same addresses to different peers.
func TestTableWatchAgreesWithRelist(t *testing.T) {
	z := mkLease("10.5.9.0/24", 1, 1)
	x := mkLease("10.5.2.0/23", 2, 2) // shares z's MAC: waits for z
	x.VtepMAC = z.VtepMAC
	y := mkLease("10.5.3.0/24", 3, 3) // overlaps x, which is not admitted
	watched := NewTable(testConfig())
	tput(watched, z)
	tput(watched, x)
	tput(watched, y)
	tremove(watched, z.Key) // x's MAC conflict is gone; it overlaps y, newer

	listed := NewTable(testConfig())
	treplace(listed, []Lease{x, y})
	expectAdmitted(t, listed, x)
	expectAdmitted(t, watched, listed.Leases()...)

	// The same through an update: a (older) takes b's MAC.
	a, b := mkLease("10.5.1.0/24", 1, 10), mkLease("10.5.2.0/24", 2, 11)
	watched = NewTable(testConfig())
	tput(watched, a)
	tput(watched, b)
	a.VtepMAC, a.ModRevision = b.VtepMAC, 12
	tput(watched, a)
	listed = NewTable(testConfig())
	treplace(listed, []Lease{a, b})
	expectAdmitted(t, listed, a)
	expectAdmitted(t, watched, listed.Leases()...)
}

func TestTableCheck(t *testing.T) {
	cfg := testConfig()
	cfg.Network = netip.MustParsePrefix("10.4.0.0/15")
	cfg.Backend.VNI = 7
	tb := NewTable(cfg)
	ok := func(subnet string) Lease {
		l := mkLease(subnet, 1, 1)
		l.VNI = 7
		return l
	}
	for _, s := range []string{"10.4.0.0/24", "10.5.255.0/24", "10.4.0.0/15", "10.5.0.0/16", "10.5.255.255/32"} {
		if err := tb.check(ok(s)); err != nil {
			t.Errorf("check(%s): %v", s, err)
		}
	}
	for _, s := range []string{"10.6.0.0/24", "10.3.255.0/24", "10.0.0.0/8", "10.4.0.0/14", "0.0.0.0/1", "192.168.1.0/24"} {
		err := tb.check(ok(s))
		if err == nil || !strings.Contains(err.Error(), "outside the overlay network 10.4.0.0/15") {
			t.Errorf("check(%s) = %v, want outside the network", s, err)
		}
	}
	for _, vni := range []int{0, 1, 6, 8, 1 << 24} {
		l := ok("10.4.1.0/24")
		l.VNI = vni
		err := tb.check(l)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("BackendData.VNI %d differs from the network's VNI 7", vni)) {
			t.Errorf("check(VNI %d) = %v", vni, err)
		}
	}
}

func TestTableLeasesSortedCopy(t *testing.T) {
	tb := NewTable(testConfig())
	subnets := []string{"10.5.200.0/24", "10.5.3.0/24", "10.5.3.128/25", "10.5.0.0/24", "10.5.30.0/24", "10.5.3.64/26", "10.5.4.0/22"}
	// 10.5.3.128/25 and 10.5.3.64/26 overlap 10.5.3.0/24 and are rejected.
	for i, s := range subnets {
		tput(tb, mkLease(s, byte(i+1), int64(i+1)))
	}
	var got []string
	leases := tb.Leases()
	for _, l := range leases {
		got = append(got, l.Subnet.String())
	}
	if want := []string{"10.5.0.0/24", "10.5.3.0/24", "10.5.4.0/22", "10.5.30.0/24", "10.5.200.0/24"}; !slices.Equal(got, want) {
		t.Errorf("Leases() subnets = %v, want %v", got, want)
	}
	if tb.Len() != 5 {
		t.Errorf("Len = %d", tb.Len())
	}
	leases[0].PublicIP = netip.MustParseAddr("1.2.3.4")
	if got, _ := tb.LookupKey(leases[0].Key); got.PublicIP == leases[0].PublicIP {
		t.Error("Leases() returns the table's own leases, not copies")
	}

	// The same with mixed lengths starting at one address is ordered by
	// length; only possible here because the table never holds both, so
	// check comparePrefix directly.
	p24, p25 := netip.MustParsePrefix("10.5.3.0/24"), netip.MustParsePrefix("10.5.3.0/25")
	if comparePrefix(p24, p25) >= 0 || comparePrefix(p25, p24) <= 0 || comparePrefix(p24, p24) != 0 {
		t.Error("comparePrefix does not order by length after address")
	}
}

func TestTableLookupKey(t *testing.T) {
	tb := NewTable(testConfig())
	a := mkLease("10.5.1.0/24", 1, 1)
	changes := mustAdmit(t, tb, a)
	got, ok := tb.LookupKey(a.Key)
	if !ok || got != a {
		t.Fatalf("LookupKey = %s, %v", fmtLease(&got), ok)
	}
	if _, ok := tb.LookupKey(testSubnetsPrefix + "10.5.1.0-25"); ok {
		t.Error("LookupKey finds a key that is not there")
	}
	// The change reported stays as it was when the lease is updated.
	a2 := a
	a2.ModRevision = 2
	a2.PublicIP = netip.MustParseAddr("198.51.100.2")
	mustAdmit(t, tb, a2)
	if *changes[0].New != a {
		t.Errorf("a reported change was modified by a later update: %s", fmtLease(changes[0].New))
	}
}

func TestTableObservers(t *testing.T) {
	tb := NewTable(testConfig())
	var got1, got2 []string
	tb.OnChange(func(c Change) { got1 = append(got1, fmtChange(c)) })
	tb.OnChange(func(c Change) { got2 = append(got2, "2:"+fmtChange(c)) })
	a := mkLease("10.5.1.0/24", 1, 1)
	b := mkLease("10.5.1.0/25", 2, 2)
	c1, _ := tput(tb, a)
	c2, _ := tput(tb, b)
	c3 := tremove(tb, a.Key)
	tb.notify(slices.Concat(c1, c2, c3))
	want := fmtChanges([]Change{added(a), removed(a), added(b)})
	if !slices.Equal(got1, want) {
		t.Errorf("observer 1 saw %v, want %v", got1, want)
	}
	for i := range want {
		want[i] = "2:" + want[i]
	}
	if !slices.Equal(got2, want) {
		t.Errorf("observer 2 saw %v, want %v", got2, want)
	}
	tb.markSynced()
	tb.markSynced() // twice is fine
	select {
	case <-tb.Synced():
	default:
		t.Error("Synced not closed after markSynced")
	}
}

// TestTableRandomOps applies random puts and removes, with many conflicts,
// and after each checks the table's invariants and that an observer that
// applies the reported changes holds exactly the admitted leases.
func TestTableRandomOps(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 7))
	tb := NewTable(testConfig())
	randomLease := func() Lease {
		bits := 22 + rng.IntN(6) // /22../27 inside 10.5.0.0/21
		start := uint32(10<<24|5<<16) + rng.Uint32N(1<<11)
		p := netip.PrefixFrom(addrFrom(start), bits).Masked()
		l := mkLease(p.String(), byte(1+rng.IntN(12)), 0)
		l.PublicIP = netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(200))})
		if rng.IntN(8) == 0 {
			l.Key += "&fd00::-64" // the same subnet under another key
		}
		return l
	}
	testRandomOps(t, tb, rng, randomLease)
}

// testRandomOps drives tb through 3000 random puts, updates and removes of
// leases from randomLease, and re-lists now and then, checking the table's
// invariants, that it holds what etcd would, and that an observer applying
// its changes holds what it holds.
func testRandomOps(t *testing.T, tb *Table, rng *rand.Rand, randomLease func() Lease) {
	etcd := map[string]Lease{} // what etcd holds: admitted or not
	mirror := map[string]Lease{}
	var rev int64
	apply := func(step int, changes []Change) {
		for _, c := range changes {
			var key string
			if c.Old != nil {
				key = c.Old.Key
				if m, ok := mirror[key]; !ok || m != *c.Old {
					t.Fatalf("step %d: change %s: Old is not what the observer holds (%s, %v)", step, fmtChange(c), fmtLease(&m), ok)
				}
				delete(mirror, key)
			}
			if c.New != nil {
				if c.Old != nil && c.New.Key != key {
					t.Fatalf("step %d: change %s spans two keys", step, fmtChange(c))
				}
				if _, ok := mirror[c.New.Key]; ok {
					t.Fatalf("step %d: change %s adds a key the observer already holds", step, fmtChange(c))
				}
				mirror[c.New.Key] = *c.New
			}
		}
	}
	for step := range 3000 {
		var changes []Change
		keys := make([]string, 0, len(etcd))
		for k := range etcd {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		rev++
		switch op := rng.IntN(10); {
		case op < 3 && len(keys) > 0:
			key := keys[rng.IntN(len(keys))]
			delete(etcd, key)
			changes = tremove(tb, key)
		case op < 6 && len(keys) > 0:
			// Update: same key, same subnets, new MAC or public IP.
			old := etcd[keys[rng.IntN(len(keys))]]
			l := randomLease()
			l.Key, l.Subnet, l.CreateRevision, l.ModRevision = old.Key, old.Subnet, old.CreateRevision, rev
			l.IPv6Subnet = old.IPv6Subnet
			if !l.IPv6Subnet.IsValid() {
				l.PublicIPv6, l.VtepMACv6 = netip.Addr{}, MAC{}
			} else if l.VtepMACv6 == (MAC{}) {
				l.VtepMACv6 = MAC{0x02, 0x66, 0, 0, 0, byte(rng.IntN(12))}
			}
			if !l.Subnet.IsValid() {
				l.VtepMAC = MAC{}
			} else if l.VtepMAC == (MAC{}) {
				l.VtepMAC = MAC{0x02, 0, 0, 0, 0, byte(1 + rng.IntN(12))}
			}
			etcd[l.Key] = l
			changes, _ = tput(tb, l)
		default:
			l := randomLease()
			if o, ok := etcd[l.Key]; ok {
				l.CreateRevision = o.CreateRevision
			} else {
				l.CreateRevision = rev
			}
			l.ModRevision = rev
			etcd[l.Key] = l
			changes, _ = tput(tb, l)
		}
		apply(step, changes)
		checkInvariants(t, tb)
		if t.Failed() {
			t.Fatalf("step %d", step)
		}
		// Admitted and waiting leases are exactly what etcd holds.
		tb.mu.RLock()
		if len(tb.byKey)+len(tb.rejected) != len(etcd) {
			t.Fatalf("step %d: %d admitted + %d waiting, etcd holds %d", step, len(tb.byKey), len(tb.rejected), len(etcd))
		}
		for k, l := range etcd {
			if a := tb.admitted(k); a != nil && *a != l {
				t.Fatalf("step %d: admitted %s, etcd holds %s", step, fmtLease(a), fmtLease(&l))
			}
			if r, ok := tb.rejected[k]; ok && r.lease != l {
				t.Fatalf("step %d: waiting %s, etcd holds %s", step, fmtLease(&r.lease), fmtLease(&l))
			}
		}
		tb.mu.RUnlock()
		if len(mirror) != tb.Len() {
			t.Fatalf("step %d: observer holds %d leases, table %d", step, len(mirror), tb.Len())
		}
		for _, l := range tb.Leases() {
			if mirror[l.Key] != l {
				t.Fatalf("step %d: observer holds %v for %s", step, mirror[l.Key], fmtLease(&l))
			}
		}

		// Now and then, a re-list of what etcd holds: the observer
		// applying its changes still ends up with the table.
		if step%100 == 99 {
			list := make([]Lease, 0, len(etcd))
			for _, l := range etcd {
				list = append(list, l)
			}
			changes, _ := treplace(tb, list)
			for i := 1; i < len(changes); i++ {
				if rank(changes[i-1]) > rank(changes[i]) {
					t.Fatalf("step %d: re-list changes out of order", step)
				}
			}
			apply(step, changes)
			checkInvariants(t, tb)
			for _, l := range tb.Leases() {
				if mirror[l.Key] != l {
					t.Fatalf("step %d: after re-list observer holds %v for %s", step, mirror[l.Key], fmtLease(&l))
				}
			}
			if len(mirror) != tb.Len() {
				t.Fatalf("step %d: after re-list observer holds %d leases, table %d", step, len(mirror), tb.Len())
			}
		}
	}
}

func TestTableConcurrentLookups(t *testing.T) {
	// Run with -race: lookups from many goroutines while leases change.
	tb := NewTable(testConfig())
	stable := mkLease("10.5.200.0/24", 200, 1)
	mustAdmit(t, tb, stable)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got, ok := tb.LookupIP(netip.MustParseAddr("10.5.200.9")); !ok || got != stable {
					t.Errorf("LookupIP of the stable lease = %s, %v", fmtLease(&got), ok)
					return
				}
				if got, ok := tb.LookupMAC(stable.VtepMAC); !ok || got != stable {
					t.Errorf("LookupMAC of the stable lease = %s, %v", fmtLease(&got), ok)
					return
				}
				tb.LookupIP(netip.MustParseAddr("10.5.3.3"))
				tb.LookupMAC(MAC{2, 0, 0, 0, 0, 3})
				tb.Leases()
				tb.Stats()
			}
		})
	}
	for i := range 2000 {
		l := mkLease(fmt.Sprintf("10.5.%d.0/24", i%8), byte(i%8), int64(i+2))
		if i%3 == 0 {
			tremove(tb, l.Key)
		} else {
			tput(tb, l)
		}
	}
	close(stop)
	wg.Wait()
}

func TestTableLookupsDoNotAllocate(t *testing.T) {
	tb := NewTable(testConfig())
	for i := range 200 {
		tput(tb, mkLease(fmt.Sprintf("10.5.%d.0/24", i+1), byte(i+1), int64(i+1)))
	}
	tput(tb, mkLease("10.5.250.64/26", 250, 1000))
	hit, miss := netip.MustParseAddr("10.5.77.7"), netip.MustParseAddr("10.5.250.1")
	v6 := netip.MustParseAddr("fd00::1")
	mac, nomac := MAC{2, 0, 0, 0, 0, 77}, MAC{2, 0, 0, 0, 1, 77}
	var sink Lease
	for name, f := range map[string]func(){
		"LookupIP hit":    func() { sink, _ = tb.LookupIP(hit) },
		"LookupIP miss":   func() { sink, _ = tb.LookupIP(miss) },
		"LookupIP IPv6":   func() { sink, _ = tb.LookupIP(v6) },
		"LookupMAC hit":   func() { sink, _ = tb.LookupMAC(mac) },
		"LookupMAC miss":  func() { sink, _ = tb.LookupMAC(nomac) },
		"LookupIP in /26": func() { sink, _ = tb.LookupIP(netip.MustParseAddr("10.5.250.70")) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
	if got, ok := tb.LookupIP(hit); !ok || got.Subnet.String() != "10.5.77.0/24" {
		t.Errorf("LookupIP(%s) = %s, %v", hit, fmtLease(&got), ok)
	}
	if got, ok := tb.LookupMAC(mac); !ok || got.Subnet.String() != "10.5.77.0/24" || got.VtepMAC != mac {
		t.Errorf("LookupMAC(%s) = %s, %v", mac, fmtLease(&got), ok)
	}

	// Both families of a dual-stack table, numbered (fd00:10::/48) and
	// hashed (fd00::/8) IPv6 subnets, and an IPv6-only table.
	hashed := dualConfig()
	hashed.IPv6Network = netip.MustParsePrefix("fd00::/8")
	for _, cfg := range []Config{dualConfig(), hashed, v6OnlyConfig()} {
		tb := NewTable(cfg)
		v4 := cfg.Network.IsValid()
		for i := range 200 {
			subnet4 := ""
			if v4 {
				subnet4 = fmt.Sprintf("10.5.%d.0/24", i+1)
			}
			tput(tb, mkLease6(subnet4, fmt.Sprintf("fd00:10:0:%x::/64", i+1), byte(i+1), int64(i+1)))
		}
		tput(tb, mkLease6("", "fd00:10:0:fa::/80", 250, 1000))
		hit6, miss6 := netip.MustParseAddr("fd00:10:0:4d::7"), netip.MustParseAddr("fd00:10:0:fb::1")
		mac6 := MAC{0x02, 0x66, 0, 0, 0, 77}
		for name, f := range map[string]func(){
			"LookupIP IPv4 hit":    func() { sink, _ = tb.LookupIP(hit) },
			"LookupIP IPv4 miss":   func() { sink, _ = tb.LookupIP(miss) },
			"LookupIP IPv6 hit":    func() { sink, _ = tb.LookupIP(hit6) },
			"LookupIP IPv6 miss":   func() { sink, _ = tb.LookupIP(miss6) },
			"LookupIP IPv6 in /80": func() { sink, _ = tb.LookupIP(netip.MustParseAddr("fd00:10:0:fa::1")) },
			"LookupIP with a zone": func() { sink, _ = tb.LookupIP(hit6.WithZone("flannel-v6.1")) },
			"LookupMAC IPv4 hit":   func() { sink, _ = tb.LookupMAC(mac) },
			"LookupMAC IPv6 hit":   func() { sink, _ = tb.LookupMAC(mac6) },
			"LookupMAC miss":       func() { sink, _ = tb.LookupMAC(nomac) },
		} {
			if n := testing.AllocsPerRun(1000, f); n != 0 {
				t.Errorf("%s in %s: %v allocations per call, want 0", name, cfg.IPv6Network, n)
			}
		}
		if got, ok := tb.LookupIP(hit6); !ok || got.IPv6Subnet.String() != "fd00:10:0:4d::/64" {
			t.Errorf("LookupIP(%s) = %s, %v", hit6, fmtLease(&got), ok)
		}
		if got, ok := tb.LookupMAC(mac6); !ok || got.IPv6Subnet.String() != "fd00:10:0:4d::/64" || got.VtepMACv6 != mac6 {
			t.Errorf("LookupMAC(%s) = %s, %v", mac6, fmtLease(&got), ok)
		}
		if got, ok := tb.LookupIP(hit); ok != v4 || v4 && got.Subnet.String() != "10.5.77.0/24" {
			t.Errorf("LookupIP(%s) = %s, %v", hit, fmtLease(&got), ok)
		}
	}
	_ = sink
}

// bigConfig is the overlay of the scale tests: flannel's 10.0.0.0/8 of
// /24s, room for 65,535 hosts.
func bigConfig() Config {
	return Config{
		Network:   netip.MustParsePrefix("10.0.0.0/8"),
		SubnetLen: 24,
		SubnetMin: netip.MustParseAddr("10.0.1.0"),
		SubnetMax: netip.MustParseAddr("10.255.255.0"),
		Backend:   Backend{Type: "vxlan", VNI: 1, Port: 8472},
	}
}

// bigLease is the i-th lease (from 1) of a big table: 10.<i>.0/24 with a
// VTEP MAC and a public IP of its own.
func bigLease(i int) Lease {
	p := netip.PrefixFrom(addrFrom(10<<24|uint32(i)<<8), 24)
	return Lease{
		Key:            "/coreos.com/network/subnets/" + SubnetKey(p),
		Subnet:         p,
		PublicIP:       netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}),
		VtepMAC:        MAC{0x02, 0x42, 0, byte(i >> 16), byte(i >> 8), byte(i)},
		VNI:            1,
		CreateRevision: int64(i + 1),
		ModRevision:    int64(i + 1),
	}
}

// bigTable holds n /24 leases in 10.0.0.0/8, keyed as flannel keys them.
func bigTable(tb testing.TB, n int) (*Table, []netip.Addr, []MAC) {
	t := NewTable(bigConfig())
	leases := make([]Lease, 0, n)
	addrs := make([]netip.Addr, 0, n)
	macs := make([]MAC, 0, n)
	for i := 1; i <= n; i++ {
		l := bigLease(i)
		leases = append(leases, l)
		addrs = append(addrs, addrFrom(10<<24|uint32(i)<<8|uint32(i%254+1)))
		macs = append(macs, l.VtepMAC)
	}
	if _, rejected := treplace(t, leases); len(rejected) != 0 {
		tb.Fatalf("%d leases rejected", len(rejected))
	}
	if t.Len() != n {
		tb.Fatalf("table holds %d leases, want %d", t.Len(), n)
	}
	r := rand.New(rand.NewPCG(3, 4))
	r.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	r.Shuffle(len(macs), func(i, j int) { macs[i], macs[j] = macs[j], macs[i] })
	return t, addrs, macs
}

func TestBigTable(t *testing.T) {
	tb, addrs, macs := bigTable(t, 50000)
	for i := range 1000 {
		a := addrs[i]
		l, ok := tb.LookupIP(a)
		if !ok || !l.Subnet.Contains(a) {
			t.Fatalf("LookupIP(%s) = %s, %v", a, fmtLease(&l), ok)
		}
		l, ok = tb.LookupMAC(macs[i])
		if !ok || l.VtepMAC != macs[i] {
			t.Fatalf("LookupMAC(%s) = %s, %v", macs[i], fmtLease(&l), ok)
		}
	}
	if n := testing.AllocsPerRun(100, func() { tb.LookupIP(addrs[7]) }); n != 0 {
		t.Errorf("LookupIP allocates %v times in a big table", n)
	}
}

// The lookup benchmarks run on a table of 50,000 leases in two patterns.
// "spread" looks up every lease once per pass, in a shuffled order, so each
// lookup goes to memory the last one did not touch, as a miss storm's do:
// it measures the machine's memory latency as much as the code. "peers"
// cycles through 512 of them, the peers a busy host actually talks to, whose
// records stay in the CPU's caches. The miss benchmarks use keys that are in
// no lease. The lease found is kept, so its copy is not optimised away.

var lookupSink Lease

// lookupPatterns runs lookup on keys in both patterns; want says whether
// each lookup must find a lease.
func lookupPatterns[K any](b *testing.B, keys []K, want bool, lookup func(K) (Lease, bool)) {
	for _, p := range []struct {
		name string
		keys []K
	}{{"spread", keys}, {"peers", keys[:512]}} {
		b.Run(p.name, func(b *testing.B) {
			benchStart(b)
			i := 0
			for b.Loop() {
				l, ok := lookup(p.keys[i])
				if ok != want {
					b.Fatalf("%v: found %v, want %v", p.keys[i], ok, want)
				}
				lookupSink = l
				if i++; i == len(p.keys) {
					i = 0
				}
			}
		})
	}
}

// BenchmarkLookupIP: spread and peers are an IPv4-only table's, as they
// always were; then a dual-stack table's lookups of each family, an
// IPv6-only table's, and one whose IPv6 subnets are too many to number
// (fd00::/8 of /64s), so hashed.
func BenchmarkLookupIP(b *testing.B) {
	tb, addrs, _ := bigTable(b, 50000)
	lookupPatterns(b, addrs, true, tb.LookupIP)
	for _, t := range bigTables6(b, 50000) {
		b.Run(t.name+"-IPv6", func(b *testing.B) { lookupPatterns(b, t.addrs6, true, t.tb.LookupIP) })
		if len(t.addrs4) > 0 {
			b.Run(t.name+"-IPv4", func(b *testing.B) { lookupPatterns(b, t.addrs4, true, t.tb.LookupIP) })
		}
	}
}

// BenchmarkLookupMAC: as BenchmarkLookupIP, by either part's MAC.
func BenchmarkLookupMAC(b *testing.B) {
	tb, _, macs := bigTable(b, 50000)
	lookupPatterns(b, macs, true, tb.LookupMAC)
	for _, t := range bigTables6(b, 50000)[:2] {
		b.Run(t.name+"-IPv6", func(b *testing.B) { lookupPatterns(b, t.macs6, true, t.tb.LookupMAC) })
		if len(t.macs4) > 0 {
			b.Run(t.name+"-IPv4", func(b *testing.B) { lookupPatterns(b, t.macs4, true, t.tb.LookupMAC) })
		}
	}
}

func BenchmarkLookupIPMiss(b *testing.B) {
	tb, _, _ := bigTable(b, 50000)
	addrs, _ := bigTableMisses(50000)
	lookupPatterns(b, addrs, false, tb.LookupIP)
	for _, t := range bigTables6(b, 50000)[:1] {
		misses := make([]netip.Addr, len(addrs))
		for i, a := range addrs {
			// The same subnet numbers, in the IPv6 network.
			misses[i] = u128{0xfd00_0010_0000_0000 | uint64(u32(a)>>8&0xffff), uint64(u32(a) & 0xff)}.addr()
		}
		b.Run(t.name+"-IPv6", func(b *testing.B) { lookupPatterns(b, misses, false, t.tb.LookupIP) })
	}
}

// bigTable6 is a big table of IPv6 or dual-stack leases, with its leases'
// addresses and MACs of each family, shuffled.
type bigTable6 struct {
	name           string
	tb             *Table
	addrs4, addrs6 []netip.Addr
	macs4, macs6   []MAC
}

// bigTables6 are the big tables of the IPv6 benchmarks: n leases each,
// lease i (from 1) holding 10.<i>.0/24 (as in bigTable) and
// fd00:10:0:<i>::/64, in a dual-stack overlay (fd00:10::/48: subnets
// numbered), an IPv6-only one, and a dual-stack one with IPv6Network
// fd00::/8 (hashed).
func bigTables6(tb testing.TB, n int) []bigTable6 {
	dual := bigConfig()
	dual.EnableIPv6, dual.IPv6Network, dual.IPv6SubnetLen = true, netip.MustParsePrefix("fd00:10::/48"), 64
	dual.IPv6SubnetMin, dual.IPv6SubnetMax = netip.MustParseAddr("fd00:10:0:1::"), netip.MustParseAddr("fd00:10:0:ffff::")
	v6only := dual
	v6only.EnableIPv4, v6only.Network, v6only.SubnetLen, v6only.SubnetMin, v6only.SubnetMax = false, netip.Prefix{}, 0, netip.Addr{}, netip.Addr{}
	hashed := dual
	hashed.IPv6Network, hashed.IPv6SubnetMin, hashed.IPv6SubnetMax = netip.MustParsePrefix("fd00::/8"), netip.MustParseAddr("fd00:0:0:1::"), netip.MustParseAddr("fdff:ffff:ffff:ffff::")
	var out []bigTable6
	r := rand.New(rand.NewPCG(7, 8))
	for _, c := range []struct {
		name string
		cfg  Config
	}{{"dual-stack", dual}, {"IPv6-only", v6only}, {"IPv6-hashed", hashed}} {
		t := bigTable6{name: c.name, tb: NewTable(c.cfg)}
		leases := make([]Lease, 0, n)
		for i := 1; i <= n; i++ {
			l := bigLease(i)
			l.IPv6Subnet = netip.PrefixFrom(u128{0xfd00_0010_0000_0000 | uint64(i), 0}.addr(), 64)
			l.PublicIPv6 = u128{0x2001_0db8_0000_0000, uint64(i)}.addr()
			l.VtepMACv6 = MAC{0x02, 0x46, 0, byte(i >> 16), byte(i >> 8), byte(i)}
			if !c.cfg.Network.IsValid() {
				l.Subnet, l.PublicIP, l.VtepMAC = netip.Prefix{}, netip.Addr{}, MAC{}
			} else {
				t.addrs4 = append(t.addrs4, addrFrom(10<<24|uint32(i)<<8|uint32(i%254+1)))
				t.macs4 = append(t.macs4, l.VtepMAC)
			}
			l.Key = "/coreos.com/network/subnets/" + LeaseKey(l.Subnet, l.IPv6Subnet)
			leases = append(leases, l)
			t.addrs6 = append(t.addrs6, u128{0xfd00_0010_0000_0000 | uint64(i), uint64(i%254 + 1)}.addr())
			t.macs6 = append(t.macs6, l.VtepMACv6)
		}
		if _, rejected := treplace(t.tb, leases); len(rejected) != 0 || t.tb.Len() != n {
			tb.Fatalf("%s: %d leases rejected, %d admitted", c.name, len(rejected), t.tb.Len())
		}
		t.tb.mu.RLock()
		odd := len(t.tb.odd)
		t.tb.mu.RUnlock()
		if odd != 0 {
			tb.Fatalf("%s: %d leases do not pack", c.name, odd)
		}
		for _, s := range [][]netip.Addr{t.addrs4, t.addrs6} {
			r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
		}
		for _, s := range [][]MAC{t.macs4, t.macs6} {
			r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
		}
		out = append(out, t)
	}
	return out
}

// TestBigTables6 checks what the IPv6 benchmarks build on.
func TestBigTables6(t *testing.T) {
	for _, bt := range bigTables6(t, 20000) {
		for i := range 1000 {
			if l, ok := bt.tb.LookupIP(bt.addrs6[i]); !ok || !l.IPv6Subnet.Contains(bt.addrs6[i]) {
				t.Fatalf("%s: LookupIP(%s) = %s, %v", bt.name, bt.addrs6[i], fmtLease(&l), ok)
			}
			if l, ok := bt.tb.LookupMAC(bt.macs6[i]); !ok || l.VtepMACv6 != bt.macs6[i] {
				t.Fatalf("%s: LookupMAC(%s) = %s, %v", bt.name, bt.macs6[i], fmtLease(&l), ok)
			}
			if len(bt.addrs4) > 0 {
				if l, ok := bt.tb.LookupIP(bt.addrs4[i]); !ok || !l.Subnet.Contains(bt.addrs4[i]) || !l.IPv6Subnet.IsValid() {
					t.Fatalf("%s: LookupIP(%s) = %s, %v", bt.name, bt.addrs4[i], fmtLease(&l), ok)
				}
			}
		}
		bt.tb.mu.RLock()
		direct := bt.tb.lengths6[0].direct != nil
		bt.tb.mu.RUnlock()
		if direct != (bt.name != "IPv6-hashed") {
			t.Errorf("%s: IPv6 subnets numbered %v", bt.name, direct)
		}
		if n := testing.AllocsPerRun(100, func() { bt.tb.LookupIP(bt.addrs6[7]) }); n != 0 {
			t.Errorf("%s: LookupIP allocates %v times in a big table", bt.name, n)
		}
	}
}

func BenchmarkLookupMACMiss(b *testing.B) {
	tb, _, _ := bigTable(b, 50000)
	_, macs := bigTableMisses(50000)
	lookupPatterns(b, macs, false, tb.LookupMAC)
}

// benchStart collects the set-up's garbage, so that the collector does not
// run during the measurement.
func benchStart(b *testing.B) {
	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
}

// bigTableMisses returns n addresses and n MACs, shuffled, that are in no
// lease of bigTable(_, n): addresses of the network's subnets it does not
// lease (for n up to 60,000), and MACs of another prefix.
func bigTableMisses(n int) ([]netip.Addr, []MAC) {
	r := rand.New(rand.NewPCG(5, 6))
	addrs := make([]netip.Addr, 0, n)
	macs := make([]MAC, 0, n)
	for i := range n {
		subnet := uint32(n + 1 + r.IntN(65536-n-1))
		addrs = append(addrs, addrFrom(10<<24|subnet<<8|uint32(1+r.IntN(254))))
		macs = append(macs, MAC{0x02, 0x43, 0, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	r.Shuffle(len(macs), func(i, j int) { macs[i], macs[j] = macs[j], macs[i] })
	return addrs, macs
}

// TestTableOwnLeaseWins: this host's lease is admitted before any other, so
// a lease claiming its subnet or MAC is refused even when it is older.
func TestTableOwnLeaseWins(t *testing.T) {
	own := mkLease("10.5.3.0/24", 3, 50)
	claim := mkLease("10.5.3.0/25", 4, 10) // older than own, inside it
	sameMAC := mkLease("10.5.4.0/24", 5, 11)
	sameMAC.VtepMAC = own.VtepMAC

	tb := NewTable(testConfig())
	tb.SetOwn(own.Key)
	mustAdmit(t, tb, claim)
	expectChanges(t, mustAdmit(t, tb, own), removed(claim), added(own))
	mustReject(t, tb, sameMAC, "VtepMAC 02:00:00:00:00:03 is this host's own")
	tb.mu.Lock()
	why := tb.rejected[claim.Key].reason
	tb.mu.Unlock()
	if why == nil || !strings.Contains(why.Error(), "claims this host's own subnet 10.5.3.0/24") {
		t.Errorf("claim rejected for %v, want it named as a claim on this host's subnet", why)
	}
	expectAdmitted(t, tb, own)

	listed := NewTable(testConfig())
	listed.SetOwn(own.Key)
	treplace(listed, []Lease{claim, sameMAC, own})
	expectAdmitted(t, listed, own)
}

// TestTableSetOwnLate: vtepd names its own key after the table has loaded;
// a lease that claimed its subnet first is pushed out then.
func TestTableSetOwnLate(t *testing.T) {
	own := mkLease("10.5.3.0/24", 3, 50)
	claim := mkLease("10.5.3.0/25", 4, 10) // older, inside own
	tb := NewTable(testConfig())
	rec := &recorder{}
	tb.OnChange(rec.observe)
	mustAdmit(t, tb, claim)
	mustReject(t, tb, own, "overlaps")
	tb.SetOwn(own.Key)
	expectAdmitted(t, tb, own)
	// SetOwn tells the observers what it changed; the puts above were
	// the test's, which tell no one.
	expectChanges(t, rec.all(), removed(claim), added(own))
}

func TestTableFind(t *testing.T) {
	tb := NewTable(testConfig())
	a, b, c := mkLease("10.5.9.0/24", 1, 10), mkLease("10.5.3.0/24", 2, 11), mkLease("10.5.6.0/24", 3, 12)
	b.PublicIP, c.PublicIP = a.PublicIP, a.PublicIP
	treplace(tb, []Lease{a, b, c, mkLease("10.5.1.0/24", 4, 13)})
	got, ok := tb.Find(func(l *Lease) bool { return l.PublicIP == a.PublicIP })
	if !ok || got.Key != b.Key {
		t.Errorf("Find by public IP = %s, %v; want the lowest subnet's, %s", fmtLease(&got), ok, b.Key)
	}
	if got, ok := tb.Find(func(*Lease) bool { return false }); ok {
		t.Errorf("Find matching nothing = %s", fmtLease(&got))
	}
}
