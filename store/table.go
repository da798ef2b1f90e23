package store

import (
	"cmp"
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
// validation, indexed for the miss path: by address (longest prefix) and by
// VTEP MAC.
//
// Two leases that overlap, or that share a VTEP MAC, cannot both be right.
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
	// free. odd holds the rare lease that does not pack, by slot.
	slots   []record
	free    []int32
	odd     map[int32]Lease
	byKey   map[string]int32
	byMAC   slotIndex // by macFingerprint(VtepMAC, macMul)
	macMul  uint64
	lengths []lengthIndex // one per prefix length present, longest first
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
// outside cfg.Network or with another VNI are refused.
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

// LookupIP returns the lease whose subnet holds a, preferring the longest
// prefix. It allocates nothing and holds a read lock only for an index probe
// and the read of one record.
func (t *Table) LookupIP(a netip.Addr) (l Lease, ok bool) {
	if !a.Is4() {
		return Lease{}, false
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
			if r := &t.slots[s]; !r.odd {
				r.unpack(&l)
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

// LookupMAC returns the lease that publishes m as its VTEP MAC. Like
// LookupIP, it allocates nothing.
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
		if r := &t.slots[e.v-1]; e.key == fp && r.mac == m {
			if !r.odd {
				r.unpack(&l)
			} else {
				l = t.odd[int32(e.v-1)]
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

// Leases returns a copy of every admitted lease, sorted by subnet.
func (t *Table) Leases() []Lease {
	t.mu.RLock()
	out := make([]Lease, 0, len(t.byKey))
	for _, s := range t.byKey {
		out = append(out, t.at(s))
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b Lease) int { return comparePrefix(a.Subnet, b.Subnet) })
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
		if l = t.at(s); match(&l) && (!found || comparePrefix(l.Subnet, best.Subnet) < 0) {
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

// check validates a parsed lease against the network configuration.
func (t *Table) check(l Lease) error {
	if !t.cfg.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() < t.cfg.Network.Bits() {
		return fmt.Errorf("subnet %s is outside the overlay network %s", l.Subnet, t.cfg.Network)
	}
	if l.VNI != t.cfg.Backend.VNI {
		return fmt.Errorf("BackendData.VNI %d differs from the network's VNI %d", l.VNI, t.cfg.Backend.VNI)
	}
	return nil
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

// macSlot returns the slot of the admitted lease whose VTEP MAC is m: the
// entry under m's fingerprint whose record holds m.
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
		if s := int32(e.v - 1); e.key == fp && t.slots[s].mac == m {
			return s, true
		}
	}
	return 0, false
}

// at returns the lease in slot s.
func (t *Table) at(s int32) Lease {
	if r := &t.slots[s]; !r.odd {
		return r.lease()
	}
	return t.odd[s]
}

// conflict reports an admitted lease that l overlaps or shares a MAC with.
func (t *Table) conflict(l Lease) error {
	if s, ok := t.macSlot(l.VtepMAC); ok && t.slots[s].key != l.Key {
		o := t.at(s)
		if o.Key == t.ownKey {
			return fmt.Errorf("VtepMAC %s is this host's own", l.VtepMAC)
		}
		return fmt.Errorf("VtepMAC %s is already used by %s", l.VtepMAC, o.Key)
	}
	for i := range t.lengths {
		li := &t.lengths[i]
		if li.bits <= l.Subnet.Bits() {
			// A lease as long or shorter overlaps l only if it holds l's address.
			if s, ok := li.get(u32(l.Subnet.Addr()) & li.mask); ok {
				return t.overlapError(l, t.at(s))
			}
			continue
		}
		// Longer leases inside l: mixed lengths are rare, a scan is fine.
		for _, s := range li.all() {
			if o := t.at(s); l.Subnet.Contains(o.Subnet.Addr()) {
				return t.overlapError(l, o)
			}
		}
	}
	return nil
}

func (t *Table) overlapError(l Lease, o Lease) error {
	if o.Key == t.ownKey {
		return fmt.Errorf("subnet %s claims this host's own subnet %s", l.Subnet, o.Subnet)
	}
	return fmt.Errorf("subnet %s overlaps %s of %s", l.Subnet, o.Subnet, o.Key)
}

// index admits l: stores it in a slot and indexes it by key, MAC and
// subnet.
func (t *Table) index(l Lease) {
	var s int32
	if n := len(t.free); n > 0 {
		s, t.free = t.free[n-1], t.free[:n-1]
	} else {
		s = int32(len(t.slots))
		t.slots = append(t.slots, record{})
	}
	r, exact := pack(l)
	t.slots[s] = r
	if !exact {
		if t.odd == nil {
			t.odd = make(map[int32]Lease)
		}
		t.odd[s] = l
	}
	t.byKey[l.Key] = s
	t.byMAC.put(macFingerprint(l.VtepMAC, t.macMul), s, func(o int32) bool { return t.slots[o].mac == l.VtepMAC })
	bits := l.Subnet.Bits()
	i, found := slices.BinarySearchFunc(t.lengths, bits, func(li lengthIndex, b int) int { return cmp.Compare(b, li.bits) })
	if !found {
		t.lengths = slices.Insert(t.lengths, i, newLengthIndex(bits, t.cfg.Network))
	}
	t.lengths[i].put(u32(l.Subnet.Addr()), s)
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
	// The MAC's entry goes if it is this lease's (it always is: admitted
	// leases do not share MACs).
	t.byMAC.del(macFingerprint(l.VtepMAC, t.macMul), func(o int32) bool { return o == s })
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
	t.slots[s] = record{} // let the key's string go
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
	t.slots, t.free, t.odd, t.byKey, t.byMAC, t.macMul, t.lengths, t.rejected = fresh.slots, fresh.free, fresh.odd, fresh.byKey, fresh.byMAC, fresh.macMul, fresh.lengths, fresh.rejected
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

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
