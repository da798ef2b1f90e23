package store

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Change is one lease appearing, changing or disappearing in the Table.
// Old is nil for a new lease, New is nil for a removed one.
type Change struct {
	Old, New *Lease
}

// Table is the in-memory set of every lease in the overlay that passed
// validation, indexed for the miss path: by address of either family
// (longest prefix within the family) and by VTEP MAC of either part.
//
// Two leases that overlap within a family, or that share a VTEP MAC (in
// any part: a MAC names one lease, so that a lookup by MAC is never
// ambiguous), cannot both be right.
// Which are admitted is a function of the set of leases alone: this host's
// own lease first, then oldest first (by etcd create revision, ties by key),
// each admitted unless it conflicts with one admitted before it. So a table
// kept by the watch and one built by a fresh list always agree, and a
// rejected lease is admitted as soon as its conflict goes away.
type Table struct {
	cfg Config
	// ownKey is this host's lease. It is admitted before any other, so a
	// lease claiming this host's subnet or VTEP MAC is the one refused.
	ownKey string

	// mu guards everything below. Lookups take it for reading, for two
	// memory reads; the one goroutine applying etcd's events takes it for
	// writing, never across I/O.
	mu sync.RWMutex
	// slots holds the admitted leases, packed (index.go); the indexes name
	// a lease by its position in it. A free slot is zero and listed in
	// free. slots6 holds their IPv6 parts by the same positions, once a
	// lease with one is admitted (nil before). odd holds the rare lease
	// that does not pack, by slot.
	slots   []record
	slots6  []record6
	free    []int32
	odd     map[int32]Lease
	byKey   map[string]int32
	byMAC   slotIndex // by macFingerprint of either part's VtepMAC, macMul
	macMul  uint64
	lengths []lengthIndex // one per IPv4 prefix length present, longest first
	// lengths6 is lengths for the IPv6 subnets.
	lengths6 []lengthIndex6
	// rejected holds leases that are valid on their own but conflict with an
	// admitted lease, with the reason.
	rejected map[string]rejectedLease

	observers []func(Change)
	synced    chan struct{}
	syncOnce  sync.Once
	stats     tableStats
}

type rejectedLease struct {
	lease  Lease
	reason error
}

type tableStats struct {
	invalid, conflicts, relists, watchRestarts atomic.Uint64
	// watching is true while the watch delivers; down is when it last
	// stopped (unix nanoseconds; 0 before the first outage), meaningful
	// only while watching is false. wasUp says it has delivered once:
	// before, not watching is start-up, not an outage.
	watching atomic.Bool
	wasUp    atomic.Bool
	down     atomic.Int64
	// outages counts the watch's outages once over, and outageNanos their
	// total length.
	outages, outageNanos atomic.Uint64
}

// TableStats counts what the table's synchronisation has seen.
type TableStats struct {
	Leases        int    // leases admitted
	Rejected      int    // valid leases waiting on a conflict
	Invalid       uint64 // lease values skipped as invalid, one per key and revision
	Conflicts     uint64 // leases rejected for overlapping another or sharing its MAC
	Relists       uint64 // full re-lists after the watch fell behind compaction
	WatchRestarts uint64 // watches re-established after an error
	// WatchOutages counts the times the watch stopped delivering after it
	// had, once each is over; WatchOutageTime is their total length.
	WatchOutages    uint64
	WatchOutageTime time.Duration
	// Watching says whether etcd's watch is delivering now. When it is
	// not, the table answers from what it holds; WatchDownSince says since
	// when.
	Watching       bool
	WatchDownSince time.Time
}

// NewTable returns an empty table for the overlay described by cfg. Leases
// outside cfg.Network (or cfg.IPv6Network) or with another VNI are refused.
func NewTable(cfg Config) *Table {
	return &Table{
		cfg:      cfg,
		byKey:    make(map[string]int32),
		macMul:   rand.Uint64() | 1,
		rejected: make(map[string]rejectedLease),
		synced:   make(chan struct{}),
	}
}

// SetOwn names this host's own lease key.
//
// It may be called while Sync runs (vtepd learns its key only once the table
// has loaded): if the key's lease is then waiting on a conflict, admission
// is decided again, so that this host's lease wins. The changes that follow
// go to the observers like any other.
func (t *Table) SetOwn(key string) {
	t.mu.Lock()
	t.ownKey = key
	var changes []Change
	if _, waiting := t.rejected[key]; waiting {
		changes, _ = t.replaceAll(t.all())
	}
	t.mu.Unlock()
	t.notify(changes)
}

// OnChange registers fn to be called after every change to the table, on the
// goroutine that applies etcd's events, in the order of the events. Register
// before Sync starts; fn must not call back into the table's mutators.
func (t *Table) OnChange(fn func(Change)) {
	t.observers = append(t.observers, fn)
}

// Synced is closed once the table holds a complete list from etcd.
func (t *Table) Synced() <-chan struct{} { return t.synced }

// LookupIP returns the lease whose subnet holds a, an IPv4 or an IPv6
// address, preferring the longest prefix. It allocates nothing and holds a
// read lock only for an index probe and the read of the slot's records.
func (t *Table) LookupIP(a netip.Addr) (l Lease, ok bool) {
	if !a.Is4() {
		// Filled in place: a Lease returned and returned again is copied
		// twice.
		ok = t.lookupIP6(a, &l)
		return l, ok
	}
	v := u32(a)
	t.mu.RLock()
	for i := range t.lengths {
		li := &t.lengths[i]
		// li.get(v & li.mask), by hand: it is too big to be inlined.
		sub := v & li.mask
		var s int32
		found := false
		if sub&li.netMask == li.netBase && li.direct != nil {
			if j := (sub - li.netBase) >> li.directShift; j < uint32(len(li.direct)) && li.direct[j] != 0 {
				s, found = int32(li.direct[j]-1), true
			}
		} else {
			s, found = li.bySubnet.get(sub)
		}
		if found {
			// t.fill(s, &l), by hand: the call costs.
			if r := &t.slots[s]; !r.odd {
				r.unpack(&l)
				if r.flags&recV6 != 0 {
					t.slots6[s].unpack(&l)
				}
			} else {
				l = t.odd[s]
			}
			t.mu.RUnlock()
			return l, true
		}
	}
	t.mu.RUnlock()
	return Lease{}, false
}

// lookupIP6 is LookupIP for an IPv6 address: the same probe of a length
// index, the same records read into *l.
func (t *Table) lookupIP6(a netip.Addr, l *Lease) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	// Not As16: its result is copied whole, and the copy's 16-byte load of
	// two 8-byte stores stalls. AppendBinary's bytes are read back as they
	// were stored, and without a zone they fit buf.
	var buf [16]byte
	b, _ := a.WithZone("").AppendBinary(buf[:0])
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:16])
	t.mu.RLock()
	for i := range t.lengths6 {
		li := &t.lengths6[i]
		sh, sl := hi&li.hiMask, lo&li.loMask
		var s int32
		found := false
		if j, direct := li.inDirect(sh, sl); direct {
			if j < uint64(len(li.direct)) && li.direct[j] != 0 {
				s, found = int32(li.direct[j]-1), true
			}
		} else {
			s, found = t.hashed6(li, sh, sl)
		}
		if found {
			t.fill(s, l)
			t.mu.RUnlock()
			return true
		}
	}
	t.mu.RUnlock()
	return false
}

// hashed6 returns the slot of the lease of li's length whose IPv6 subnet
// starts at hi:lo, among those under its fingerprint.
func (t *Table) hashed6(li *lengthIndex6, hi, lo uint64) (int32, bool) {
	h := &li.bySubnet
	fp := li.fingerprint(hi, lo)
	ents := h.ents
	mask := uint64(len(ents)) - 1
	for i := h.home(fp); i < uint64(len(ents)); i = (i + 1) & mask {
		e := &ents[i]
		if e.v == 0 {
			break
		}
		if s := int32(e.v - 1); e.key == fp && t.subnet6Is(s, hi, lo) {
			return s, true
		}
	}
	return 0, false
}

// subnet6Is reports whether the IPv6 subnet of the lease in slot s starts
// at hi:lo.
func (t *Table) subnet6Is(s int32, hi, lo uint64) bool {
	if r := &t.slots[s]; !r.odd {
		sub := &t.slots6[s].sub
		return binary.BigEndian.Uint64(sub[:8]) == hi && binary.BigEndian.Uint64(sub[8:]) == lo
	}
	u := u128Of(t.odd[s].IPv6Subnet.Addr())
	return u.hi == hi && u.lo == lo
}

// LookupMAC returns the lease that publishes m as the VTEP MAC of either of
// its parts. Like LookupIP, it allocates nothing.
func (t *Table) LookupMAC(m MAC) (l Lease, ok bool) {
	t.mu.RLock()
	// macSlot, by hand: it is too big to be inlined, and the call costs.
	h := &t.byMAC
	fp := macFingerprint(m, t.macMul)
	ents := h.ents
	mask := uint64(len(ents)) - 1
	for i := h.home(fp); i < uint64(len(ents)); i = (i + 1) & mask {
		e := &ents[i]
		if e.v == 0 {
			break
		}
		s := int32(e.v - 1)
		if r := &t.slots[s]; e.key == fp && (r.mac == m && r.flags&recV4 != 0 || r.flags&recV6 != 0 && t.slots6[s].mac == m) {
			// t.fill(s, &l), by hand.
			if !r.odd {
				r.unpack(&l)
				if r.flags&recV6 != 0 {
					t.slots6[s].unpack(&l)
				}
			} else {
				l = t.odd[s]
			}
			t.mu.RUnlock()
			return l, true
		}
	}
	t.mu.RUnlock()
	return Lease{}, false
}

// LookupKey returns the admitted lease stored under an etcd key.
func (t *Table) LookupKey(key string) (Lease, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if s, ok := t.byKey[key]; ok {
		return t.at(s), true
	}
	return Lease{}, false
}

// Leases returns a copy of every admitted lease, sorted by subnet (IPv4,
// then IPv6: IPv6-only leases first).
func (t *Table) Leases() []Lease {
	t.mu.RLock()
	out := make([]Lease, 0, len(t.byKey))
	for _, s := range t.byKey {
		out = append(out, t.at(s))
	}
	t.mu.RUnlock()
	slices.SortFunc(out, compareLeases)
	return out
}

// Find returns the admitted lease with the lowest subnet for which match is
// true, without copying the table as Leases does: at 50,000 leases that
// copy is 6 MB of garbage. match runs under the table's read lock and must
// not call the table.
func (t *Table) Find(match func(*Lease) bool) (Lease, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var best, l Lease
	found := false
	for _, s := range t.byKey {
		if l = t.at(s); match(&l) && (!found || compareLeases(l, best) < 0) {
			best, found = l, true
		}
	}
	return best, found
}

// Len is the number of admitted leases.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byKey)
}

// Stats returns the table's counters.
func (t *Table) Stats() TableStats {
	t.mu.RLock()
	n, r := len(t.byKey), len(t.rejected)
	t.mu.RUnlock()
	st := TableStats{
		Leases:        n,
		Rejected:      r,
		Invalid:       t.stats.invalid.Load(),
		Conflicts:     t.stats.conflicts.Load(),
		Relists:       t.stats.relists.Load(),
		WatchRestarts: t.stats.watchRestarts.Load(),
		Watching:      t.stats.watching.Load(),

		WatchOutages:    t.stats.outages.Load(),
		WatchOutageTime: time.Duration(t.stats.outageNanos.Load()),
	}
	if d := t.stats.down.Load(); d != 0 && !st.Watching {
		st.WatchDownSince = time.Unix(0, d)
	}
	return st
}

// setWatching records whether the watch delivers, and since when it has
// not. It reports the start of an outage (the watch had delivered, and
// stops), and the end of one with how long it lasted.
func (t *Table) setWatching(up bool) (started bool, ended time.Duration) {
	was := t.stats.watching.Swap(up)
	now := time.Now()
	switch {
	case !up && (was || t.stats.down.Load() == 0):
		t.stats.down.Store(now.UnixNano())
		return was, 0
	case up && !was && t.stats.wasUp.Swap(true):
		d := now.Sub(time.Unix(0, t.stats.down.Load()))
		t.stats.outages.Add(1)
		t.stats.outageNanos.Add(uint64(d))
		return false, max(d, time.Nanosecond)
	case up:
		t.stats.wasUp.Store(true)
	}
	return false, 0
}

// RejectedLease is a valid lease the table does not believe, and why.
type RejectedLease struct {
	Lease  Lease
	Reason string
}

// Rejected returns the leases waiting on a conflict, sorted by key.
func (t *Table) Rejected() []RejectedLease {
	t.mu.RLock()
	out := make([]RejectedLease, 0, len(t.rejected))
	for _, r := range t.rejected {
		out = append(out, RejectedLease{Lease: r.lease, Reason: r.reason.Error()})
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b RejectedLease) int { return strings.Compare(a.Lease.Key, b.Lease.Key) })
	return out
}

// check validates a parsed lease against the network configuration, each
// part against its family: the IPv4 part inside Network (an IPv4 part in an
// IPv6-only overlay is an error), the IPv6 part inside IPv6Network. An IPv6
// part in an IPv4-only overlay is no error, only of no use: trim drops it.
// At least one part must be of use.
func (t *Table) check(l Lease) error {
	usable := false
	if l.Subnet.IsValid() {
		if !t.cfg.Network.IsValid() {
			return fmt.Errorf("subnet %s is IPv4, but the overlay is IPv6-only (EnableIPv4 false)", l.Subnet)
		}
		if !t.cfg.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() < t.cfg.Network.Bits() {
			return fmt.Errorf("subnet %s is outside the overlay network %s", l.Subnet, t.cfg.Network)
		}
		usable = true
	}
	if l.IPv6Subnet.IsValid() && t.cfg.IPv6Network.IsValid() {
		if n := t.cfg.IPv6Network; !n.Contains(l.IPv6Subnet.Addr()) || l.IPv6Subnet.Bits() < n.Bits() {
			return fmt.Errorf("IPv6 subnet %s is outside the overlay's IPv6Network %s", l.IPv6Subnet, n)
		}
		usable = true
	}
	switch {
	case usable:
	case l.IPv6Subnet.IsValid():
		return fmt.Errorf("IPv6 subnet %s is the lease's only one, but the overlay is IPv4-only (EnableIPv6 false)", l.IPv6Subnet)
	default:
		return errors.New("the lease has no subnet")
	}
	if l.VNI != t.cfg.Backend.VNI {
		field := "BackendData.VNI"
		if !l.Subnet.IsValid() {
			field = "BackendV6Data.VNI"
		}
		return fmt.Errorf("%s %d differs from the network's VNI %d", field, l.VNI, t.cfg.Backend.VNI)
	}
	return nil
}

// trim is a lease that passed check as the table admits it: without an
// IPv6 part in an overlay without IPv6 (a dual-stack flanneld's lease in
// an IPv4-only overlay is its IPv4 part).
func (t *Table) trim(l Lease) Lease {
	if !t.cfg.IPv6Network.IsValid() {
		l.IPv6Subnet, l.PublicIPv6, l.VtepMACv6 = netip.Prefix{}, netip.Addr{}, MAC{}
	}
	return l
}

// put stores l under its key, admitted or rejected, and returns the changes
// to the admitted set and, if l was rejected, why. Called with t.mu held.
//
// While nothing conflicts, a put is O(1). A conflict, or a lease waiting on
// one, makes every put and remove decide the whole admission again: slower,
// but only while the input is already wrong.
func (t *Table) put(l Lease) ([]Change, error) {
	old := t.admitted(l.Key)
	if len(t.rejected) == 0 {
		if old != nil {
			t.unindex(old.Key)
		}
		if t.conflict(l) == nil {
			t.index(l)
			return []Change{{Old: old, New: ptr(l)}}, nil
		}
		if old != nil {
			t.index(*old)
		}
	}
	all := t.all()
	for i := range all {
		if all[i].Key == l.Key {
			all = slices.Delete(all, i, i+1)
			break
		}
	}
	changes, rejected := t.replaceAll(append(all, l))
	return changes, rejected[l.Key]
}

// remove drops whatever is stored under key. Called with t.mu held.
func (t *Table) remove(key string) []Change {
	if _, ok := t.rejected[key]; ok {
		delete(t.rejected, key) // it was not admitted: nothing changes
		return nil
	}
	old := t.admitted(key)
	if old == nil {
		return nil
	}
	t.unindex(key)
	if len(t.rejected) == 0 {
		return []Change{{Old: old}}
	}
	// A waiting lease may fit now.
	changes, _ := t.replaceAll(t.all())
	return append([]Change{{Old: old}}, changes...)
}

// rejectedLeases returns the leases waiting on a conflict. Called with t.mu
// held.
func (t *Table) rejectedLeases() []rejectedLease {
	if len(t.rejected) == 0 {
		return nil
	}
	out := make([]rejectedLease, 0, len(t.rejected))
	for _, r := range t.rejected {
		out = append(out, r)
	}
	return out
}

// all returns every lease the table holds, admitted or rejected.
func (t *Table) all() []Lease {
	out := make([]Lease, 0, len(t.byKey)+len(t.rejected))
	for _, s := range t.byKey {
		out = append(out, t.at(s))
	}
	for _, r := range t.rejected {
		out = append(out, r.lease)
	}
	return out
}

// admissionOrder is the order leases are admitted in: this host's own
// first, then oldest first, ties by key.
func (t *Table) admissionOrder(a, b Lease) int {
	switch {
	case a.Key == t.ownKey && b.Key != t.ownKey:
		return -1
	case b.Key == t.ownKey && a.Key != t.ownKey:
		return 1
	}
	if c := cmp.Compare(a.CreateRevision, b.CreateRevision); c != 0 {
		return c
	}
	return strings.Compare(a.Key, b.Key)
}

// admitted returns a copy of the admitted lease stored under key, or nil.
// The copy is what changes report: observers may keep it, while a slot is
// reused.
func (t *Table) admitted(key string) *Lease {
	if s, ok := t.byKey[key]; ok {
		return ptr(t.at(s))
	}
	return nil
}

func ptr(l Lease) *Lease { return &l }

// macSlot returns the slot of the admitted lease whose VTEP MAC (of either
// part) is m: the entry under m's fingerprint whose records hold m.
func (t *Table) macSlot(m MAC) (int32, bool) {
	h := &t.byMAC
	fp := macFingerprint(m, t.macMul)
	ents := h.ents
	mask := uint64(len(ents)) - 1
	for i := h.home(fp); i < uint64(len(ents)); i = (i + 1) & mask {
		e := &ents[i]
		if e.v == 0 {
			break
		}
		if s := int32(e.v - 1); e.key == fp && t.hasMAC(s, m) {
			return s, true
		}
	}
	return 0, false
}

// hasMAC reports whether the lease in slot s publishes m in either part.
func (t *Table) hasMAC(s int32, m MAC) bool {
	r := &t.slots[s]
	return r.mac == m && r.flags&recV4 != 0 || r.flags&recV6 != 0 && t.slots6[s].mac == m
}

// macs returns the VTEP MACs l publishes: its IPv4 part's, its IPv6 part's
// if that is another.
func macs(l Lease) []MAC {
	var out []MAC
	if l.Subnet.IsValid() {
		out = append(out, l.VtepMAC)
	}
	if l.IPv6Subnet.IsValid() && (!l.Subnet.IsValid() || l.VtepMACv6 != l.VtepMAC) {
		out = append(out, l.VtepMACv6)
	}
	return out
}

// at returns the lease in slot s.
func (t *Table) at(s int32) Lease {
	var l Lease
	t.fill(s, &l)
	return l
}

// fill writes the lease in slot s into *l, the zero Lease: in place, for
// the lookups, which fill their result with it.
func (t *Table) fill(s int32, l *Lease) {
	r := &t.slots[s]
	if r.odd {
		*l = t.odd[s]
		return
	}
	r.unpack(l)
	if r.flags&recV6 != 0 {
		t.slots6[s].unpack(l)
	}
}

// conflict reports an admitted lease that l overlaps within a family or
// shares a MAC with.
func (t *Table) conflict(l Lease) error {
	for _, m := range macs(l) {
		if s, ok := t.macSlot(m); ok && t.slots[s].key != l.Key {
			o := t.at(s)
			if o.Key == t.ownKey {
				return fmt.Errorf("VtepMAC %s is this host's own", m)
			}
			return fmt.Errorf("VtepMAC %s is already used by %s", m, o.Key)
		}
	}
	if l.Subnet.IsValid() {
		for i := range t.lengths {
			li := &t.lengths[i]
			if li.bits <= l.Subnet.Bits() {
				// A lease as long or shorter overlaps l only if it holds l's address.
				if s, ok := li.get(u32(l.Subnet.Addr()) & li.mask); ok {
					return t.overlapError("subnet", l.Subnet, t.at(s), t.at(s).Subnet)
				}
				continue
			}
			// Longer leases inside l: mixed lengths are rare, a scan is fine.
			for _, s := range li.all() {
				if o := t.at(s); l.Subnet.Contains(o.Subnet.Addr()) {
					return t.overlapError("subnet", l.Subnet, o, o.Subnet)
				}
			}
		}
	}
	if l.IPv6Subnet.IsValid() {
		u := u128Of(l.IPv6Subnet.Addr())
		for i := range t.lengths6 {
			li := &t.lengths6[i]
			if li.bits <= l.IPv6Subnet.Bits() {
				if s, ok := t.get6(li, u.hi&li.hiMask, u.lo&li.loMask); ok {
					return t.overlapError("IPv6 subnet", l.IPv6Subnet, t.at(s), t.at(s).IPv6Subnet)
				}
				continue
			}
			for s := range li.all() {
				if o := t.at(s); l.IPv6Subnet.Contains(o.IPv6Subnet.Addr()) {
					return t.overlapError("IPv6 subnet", l.IPv6Subnet, o, o.IPv6Subnet)
				}
			}
		}
	}
	return nil
}

// get6 returns the slot of the lease of li's length whose IPv6 subnet
// starts at hi:lo.
func (t *Table) get6(li *lengthIndex6, hi, lo uint64) (int32, bool) {
	if j, direct := li.inDirect(hi, lo); direct {
		if v := li.direct[j]; v != 0 {
			return int32(v - 1), true
		}
		return 0, false
	}
	return t.hashed6(li, hi, lo)
}

// overlapError says that l's subnet sub (of the family what names)
// overlaps o's subnet osub.
func (t *Table) overlapError(what string, sub netip.Prefix, o Lease, osub netip.Prefix) error {
	if o.Key == t.ownKey {
		return fmt.Errorf("%s %s claims this host's own %s %s", what, sub, what, osub)
	}
	return fmt.Errorf("%s %s overlaps %s of %s", what, sub, osub, o.Key)
}

// index admits l: stores it in a slot and indexes it by key, MACs and
// subnets.
func (t *Table) index(l Lease) {
	var s int32
	if n := len(t.free); n > 0 {
		s, t.free = t.free[n-1], t.free[:n-1]
	} else {
		s = int32(len(t.slots))
		t.slots = append(t.slots, record{})
		if t.slots6 != nil {
			t.slots6 = append(t.slots6, record6{})
		}
	}
	r, r6, exact := t.pack(l)
	t.slots[s] = r
	if r.flags&recV6 != 0 {
		if t.slots6 == nil {
			t.slots6 = make([]record6, len(t.slots), cap(t.slots))
		}
		t.slots6[s] = r6
	}
	if !exact {
		if t.odd == nil {
			t.odd = make(map[int32]Lease)
		}
		t.odd[s] = l
	}
	t.byKey[l.Key] = s
	for _, m := range macs(l) {
		t.byMAC.put(macFingerprint(m, t.macMul), s, func(o int32) bool { return t.hasMAC(o, m) })
	}
	if l.Subnet.IsValid() {
		bits := l.Subnet.Bits()
		i, found := slices.BinarySearchFunc(t.lengths, bits, func(li lengthIndex, b int) int { return cmp.Compare(b, li.bits) })
		if !found {
			t.lengths = slices.Insert(t.lengths, i, newLengthIndex(bits, t.cfg.Network))
		}
		t.lengths[i].put(u32(l.Subnet.Addr()), s)
	}
	if l.IPv6Subnet.IsValid() {
		bits := l.IPv6Subnet.Bits()
		i, found := slices.BinarySearchFunc(t.lengths6, bits, func(li lengthIndex6, b int) int { return cmp.Compare(b, li.bits) })
		if !found {
			t.lengths6 = slices.Insert(t.lengths6, i, newLengthIndex6(bits, t.cfg.IPv6Network))
		}
		u := u128Of(l.IPv6Subnet.Addr())
		t.lengths6[i].put(u.hi, u.lo, s)
	}
}

// unindex drops the admitted lease stored under key from the indexes and
// frees its slot.
func (t *Table) unindex(key string) {
	s, ok := t.byKey[key]
	if !ok {
		return
	}
	l := t.at(s)
	delete(t.byKey, key)
	// The MACs' entries go if they are this lease's (they always are:
	// admitted leases do not share MACs).
	for _, m := range macs(l) {
		t.byMAC.del(macFingerprint(m, t.macMul), func(o int32) bool { return o == s })
	}
	if l.Subnet.IsValid() {
		for i := range t.lengths {
			li := &t.lengths[i]
			if li.bits != l.Subnet.Bits() {
				continue
			}
			li.del(u32(l.Subnet.Addr()))
			if li.len() == 0 {
				t.lengths = slices.Delete(t.lengths, i, i+1)
			}
			break
		}
	}
	if l.IPv6Subnet.IsValid() {
		u := u128Of(l.IPv6Subnet.Addr())
		for i := range t.lengths6 {
			li := &t.lengths6[i]
			if li.bits != l.IPv6Subnet.Bits() {
				continue
			}
			li.del(u.hi, u.lo, s)
			if li.len() == 0 {
				t.lengths6 = slices.Delete(t.lengths6, i, i+1)
			}
			break
		}
	}
	t.slots[s] = record{} // let the key's string go
	if t.slots6 != nil {
		t.slots6[s] = record6{}
	}
	delete(t.odd, s)
	t.free = append(t.free, s)
}

// replaceAll makes the table hold exactly leases, as after a fresh list, and
// returns the difference to what it held and every rejected lease with the
// reason. It sorts leases in place.
func (t *Table) replaceAll(leases []Lease) ([]Change, map[string]error) {
	fresh := NewTable(t.cfg)
	fresh.ownKey = t.ownKey
	fresh.slots = make([]record, 0, len(leases))
	fresh.byKey = make(map[string]int32, len(leases))
	slices.SortFunc(leases, t.admissionOrder)
	rejected := make(map[string]error)
	for _, l := range leases {
		if err := fresh.conflict(l); err != nil {
			fresh.rejected[l.Key] = rejectedLease{lease: l, reason: err}
			rejected[l.Key] = err
			continue
		}
		fresh.index(l)
	}

	// The changes point at copies, not into the slot arrays: observers may
	// keep them.
	var changes []Change
	for key, s := range t.byKey {
		old := t.at(s)
		ns, ok := fresh.byKey[key]
		switch {
		case !ok:
			changes = append(changes, Change{Old: &old})
		case fresh.at(ns) != old:
			changes = append(changes, Change{Old: &old, New: ptr(fresh.at(ns))})
		}
	}
	for key, ns := range fresh.byKey {
		if _, ok := t.byKey[key]; !ok {
			changes = append(changes, Change{New: ptr(fresh.at(ns))})
		}
	}
	// Removals first, so that observers never see two leases for one
	// subnet; then by key, so that the same difference is always reported
	// the same way.
	slices.SortFunc(changes, func(a, b Change) int {
		if c := cmp.Compare(rank(a), rank(b)); c != 0 {
			return c
		}
		return strings.Compare(changeKey(a), changeKey(b))
	})
	t.slots, t.slots6, t.free, t.odd, t.byKey, t.byMAC, t.macMul = fresh.slots, fresh.slots6, fresh.free, fresh.odd, fresh.byKey, fresh.byMAC, fresh.macMul
	t.lengths, t.lengths6, t.rejected = fresh.lengths, fresh.lengths6, fresh.rejected
	return changes, rejected
}

func changeKey(c Change) string {
	if c.New != nil {
		return c.New.Key
	}
	return c.Old.Key
}

func rank(c Change) int {
	switch {
	case c.New == nil:
		return 0
	case c.Old != nil:
		return 1
	default:
		return 2
	}
}

func (t *Table) notify(changes []Change) {
	for _, c := range changes {
		for _, fn := range t.observers {
			fn(c)
		}
	}
}

func (t *Table) markSynced() { t.syncOnce.Do(func() { close(t.synced) }) }

// compareLeases orders leases by IPv4 subnet, then IPv6 subnet (a part a
// lease does not have first), then key.
func compareLeases(a, b Lease) int {
	if c := comparePrefix(a.Subnet, b.Subnet); c != 0 {
		return c
	}
	if c := comparePrefix(a.IPv6Subnet, b.IPv6Subnet); c != 0 {
		return c
	}
	return strings.Compare(a.Key, b.Key)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
