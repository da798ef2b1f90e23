package miss

// Bringing the kernel in line with the lease table as a whole rather than
// miss by miss: at start-up (Reconcile), after a socket overflow or a new
// lease (Sweep), and after the device lost its routes (RestoreRoutes).

import (
	"errors"
	"net/netip"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"golang.org/x/sys/unix"
)

// Reconciled counts what Reconcile did.
type Reconciled struct {
	Kept, Fixed, Removed int
	// Answered counts addresses the kernel was still resolving (their
	// misses arrived while no vtepd listened); answering them now releases
	// the packets queued on them.
	Answered int
}

// overlayRoute is the one route every mode has.
func (r *Responder) overlayRoute() fabric.Route { return fabric.Route{Dst: r.cfg.Network} }

// Reconcile compares the device's routes, neighbour and FDB entries with
// the lease table, as at start-up: right entries are kept untouched (no
// flap, no lost packet), entries pointing at the wrong VTEP are re-pointed,
// entries with no lease behind them are deleted (flanneld's per-host routes
// among them, in address mode), and addresses still being resolved are
// answered. Call it once the table has synced.
//
// Each table is one entryKind: how to list it, what each entry deserves,
// and how to carry that out. Routes go first, then the FDB, then the
// neighbours, so that a neighbour kept or answered finds its VTEP's FDB
// entry already right.
func (r *Responder) Reconcile() (Reconciled, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.fdb)
	clear(r.hostRoutes)
	clear(r.directRoutes)
	r.permanent = 0 // counted again below, entry by entry
	r.reconciled = true
	var res Reconciled
	var errs []error
	for _, reconcile := range []func(*Reconciled) (listed bool, err error){
		entryKind[fabric.Route]{r.kernel.Routes, r.judgeRoute, r.applyRoute, r.kernel.DelRoute}.reconcile,
		entryKind[fabric.FDBEntry]{r.kernel.FDB, r.judgeFDB, r.applyFDB, func(f fabric.FDBEntry) error { return r.kernel.DelFDB(f.MAC, f.Dst) }}.reconcile,
		entryKind[fabric.Neighbour]{r.kernel.Neighbours, r.judgeNeighbour, r.applyNeighbour, func(n fabric.Neighbour) error { return r.kernel.DelNeigh(n.IP) }}.reconcile,
	} {
		listed, err := reconcile(&res)
		if err != nil {
			errs = append(errs, err)
		}
		if !listed {
			break // what follows depends on this table being right
		}
	}
	return res, errors.Join(errs...)
}

// verdict is what reconciliation does with one entry the kernel holds.
type verdict uint8

const (
	// leave: not vtepd's to judge (the kernel's own entries, or an address
	// being resolved that no lease holds: it will fail and go).
	leave verdict = iota
	// keep: right as it is.
	keep
	// fix: rewrite it in place (wrong VTEP, or not PERMANENT).
	fix
	// answer: still being resolved, and a lease says where to: answer it,
	// which releases the packets the kernel queued on it.
	answer
	// remove: no lease behind it.
	remove
)

// entryKind is one table of the device's entries as Reconcile sees it:
// list it, judge each entry against the lease table, then apply the
// verdict (keep, fix, answer) or remove the entry. An address family or a
// kind of entry is one more entryKind, not one more loop.
type entryKind[E any] struct {
	list   func() ([]E, error)
	judge  func(E) (verdict, store.Part)
	apply  func(E, verdict, store.Part) error
	remove func(E) error
}

// reconcile applies the verdicts to every entry the kernel lists, counting
// them in res. listed says whether the kernel could be asked at all.
func (k entryKind[E]) reconcile(res *Reconciled) (listed bool, err error) {
	have, err := k.list()
	if err != nil {
		return false, err
	}
	var errs []error
	for _, e := range have {
		v, l := k.judge(e)
		switch v {
		case leave:
			continue
		case remove:
			err = k.remove(e)
		default:
			err = k.apply(e, v, l)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res.count(v)
	}
	return true, errors.Join(errs...)
}

func (res *Reconciled) count(v verdict) {
	switch v {
	case keep:
		res.Kept++
	case fix:
		res.Fixed++
	case answer:
		res.Answered++
	case remove:
		res.Removed++
	}
}

// judgeRoute keeps the overlay route and, in host mode, the host routes
// that point at a lease's first address; any other route of the device
// goes (flanneld's per-host routes among them, in address mode).
func (r *Responder) judgeRoute(rt fabric.Route) (verdict, store.Part) {
	if rt == r.overlayRoute() {
		return keep, store.Part{}
	}
	if rt.Direct {
		// Kept while DirectRouting still reaches that lease's peer there
		// (a flanneld with DirectRouting left the same route).
		if l, ok := r.remoteLease(rt.Dst.Addr()); ok && rt.Dst == l.Subnet && rt.Via == l.PublicIP && r.reachedDirectly(l) {
			return keep, l
		}
		return remove, store.Part{}
	}
	if l, ok := r.remoteLease(rt.Via); ok && r.cfg.Mode == AnswerHost && rt.Dst == l.Subnet && rt.Via == l.Gateway() {
		return keep, l
	}
	return remove, store.Part{}
}

func (r *Responder) applyRoute(rt fabric.Route, _ verdict, _ store.Part) error {
	switch {
	case rt.Direct:
		r.directRoutes[rt.Dst] = rt.Via
	case rt.Via.IsValid():
		r.hostRoutes[rt.Dst] = rt.Via
	}
	return nil
}

// judgeFDB keeps an entry that sends a lease's VTEP MAC to its public IP
// as a PERMANENT entry, fixes one that does so but ages (left by flanneld,
// say), and removes every other: a MAC no lease publishes, or one sent to
// the wrong place.
func (r *Responder) judgeFDB(f fabric.FDBEntry) (verdict, store.Part) {
	l, ok := r.lookupMAC(store.MAC(f.MAC))
	switch {
	case !ok || l.PublicIP != f.Dst || l.Subnet == r.cfg.Own:
		return remove, store.Part{}
	case f.State&unix.NUD_PERMANENT == 0:
		return fix, l
	}
	return keep, l
}

func (r *Responder) applyFDB(_ fabric.FDBEntry, v verdict, l store.Part) error {
	if v == keep {
		r.fdb[l.VtepMAC] = l.PublicIP
		return nil
	}
	// In place, rather than deleted and added again: no moment without it.
	_, err := r.ensureFDB(l)
	return err
}

// judgeNeighbour keeps a PERMANENT entry that resolves an address to its
// lease's VTEP MAC, fixes one that resolves it to another or that ages (an
// older vtepd's, which a long absence of vtepd would let fail), answers
// one the kernel is still resolving, and removes one no lease holds.
func (r *Responder) judgeNeighbour(n fabric.Neighbour) (verdict, store.Part) {
	if n.State&unix.NUD_NOARP != 0 {
		return leave, store.Part{} // multicast and broadcast: the kernel's own
	}
	l, ok := r.remoteLease(n.IP)
	resolving := n.State&(unix.NUD_INCOMPLETE|unix.NUD_FAILED) != 0 || len(n.MAC) != 6
	switch {
	case !ok && resolving:
		return leave, store.Part{}
	case !ok:
		return remove, store.Part{}
	case resolving:
		return answer, l
	case macIs(n.MAC, l.VtepMAC) && n.State&unix.NUD_PERMANENT != 0:
		return keep, l
	}
	return fix, l
}

func (r *Responder) applyNeighbour(n fabric.Neighbour, v verdict, l store.Part) error {
	if v == keep {
		r.permanent++
		// Even a right neighbour needs its FDB entry, which may have been
		// missing or wrong (and removed with the FDB's verdicts).
		_, err := r.ensureFDB(l)
		return err
	}
	_, err := r.install(n.IP, l)
	return err
}

// Sweep answers every address the kernel is still resolving on the device
// (INCOMPLETE) for which a lease exists, and returns how many it answered.
// It recovers misses lost to a socket overflow at once: waiting for the
// kernel's retries would meet them again as one burst, and after
// app_solicit retries the kernel gives up and drops what it queued.
func (r *Responder) Sweep() (int, error) {
	// The dump needs no r.mu: holding it here would stall the miss path
	// for the length of a dump, in the storms that call for sweeps. An
	// address answered meanwhile is written once more, harmlessly.
	neighbours, err := r.kernel.Neighbours()
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	var writes []fabric.NeighWrite
	answered, pending := 0, 0 // pending: PERMANENT writes in the batch
	// routed holds the subnets whose host route this sweep installed,
	// with their first address's neighbour: found later in the dump, that
	// address is answered already.
	var routed map[netip.Prefix]bool
	for _, n := range neighbours {
		if n.State&unix.NUD_INCOMPLETE == 0 {
			continue
		}
		l, ok := r.remoteLease(n.IP)
		if !ok {
			continue
		}
		if n.IP == l.Gateway() && routed[l.Subnet] {
			answered++
			continue
		}
		// FDB entries and host routes one by one (one per peer, and
		// mostly there already); the addresses' entries in batches.
		hadRoute := r.hostRoutes[l.Subnet] == l.Gateway()
		_, done, err := r.prepare(n.IP, l)
		if !hadRoute && r.hostRoutes[l.Subnet] == l.Gateway() {
			if routed == nil {
				routed = make(map[netip.Prefix]bool)
			}
			routed[l.Subnet] = true
		}
		switch {
		case err != nil:
			errs = append(errs, err)
		case done:
			answered++
		default:
			w := fabric.NeighWrite{IP: n.IP, MAC: l.VtepMAC, Permanent: r.permanent+pending < r.cfg.NeighbourLimit}
			if w.Permanent {
				pending++
			}
			writes = append(writes, w)
		}
	}
	ok, err := r.kernel.SetNeighs(writes)
	// What the kernel refused is not told apart by permanence: counting
	// every PERMANENT write of the batch errs on the side of the limit.
	for _, w := range writes {
		r.countPermanent(w.Permanent, 1)
	}
	return answered + ok, errors.Join(append(errs, err)...)
}

// RestoreRoutes puts back the host routes and the direct routes the kernel
// lost, as it does when the device (host routes) or the underlay interface
// (direct routes) goes down. Call it whenever either may have lost routes:
// a direct route believed installed is never written again by an answer,
// and without it the peer's direct packets meet a route back through the
// device (which a strict reverse-path filter drops).
func (r *Responder) RestoreRoutes() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.hostRoutes) == 0 && len(r.directRoutes) == 0 {
		return nil
	}
	routes, err := r.kernel.Routes()
	if err != nil {
		return err
	}
	present := make(map[fabric.Route]bool, len(routes))
	for _, rt := range routes {
		present[rt] = true
	}
	var errs []error
	restore := func(rt fabric.Route) {
		if present[rt] {
			return
		}
		if err := r.kernel.SetRoute(rt, r.cfg.Gateway); err != nil {
			errs = append(errs, err)
		}
	}
	for dst, via := range r.hostRoutes {
		restore(fabric.Route{Dst: dst, Via: via})
	}
	for dst, via := range r.directRoutes {
		restore(fabric.Route{Dst: dst, Via: via, Direct: true})
	}
	return errors.Join(errs...)
}
