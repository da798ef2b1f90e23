package miss

import (
	"errors"
	"net"
	"net/netip"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ApplyChange brings the kernel in line with one change of the lease table,
// so that nothing vtepd installed outlives the truth in etcd: when a lease
// goes, every neighbour and FDB entry pointing at its VTEP goes, and its host
// route; when its VTEP MAC or public IP changes (a rebuilt host), the
// entries are re-pointed, the new FDB entry first. When a lease appears, a
// sweep is asked for: peers that sent to the new host before its lease was
// known are answered now rather than at the kernel's next probe. Pass it to
// store.Table.OnChange; it runs on the table's goroutine and is serialised
// with answering by r.mu.
func (r *Responder) ApplyChange(c store.Change) {
	if c.Old == nil {
		r.mu.Lock()
		sweep := r.reconciled && r.cfg.Sweep != nil && c.New != nil && c.New.Subnet != r.cfg.Own
		r.mu.Unlock()
		if sweep {
			r.cfg.Sweep()
		}
		return
	}
	if c.New != nil && c.Old.SameTarget(*c.New) {
		return // a new revision changes no entry
	}
	old := *c.Old
	if old.Subnet == r.cfg.Own {
		return // nothing is ever installed for our own subnet
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var next *store.Lease
	if c.New != nil && c.New.Subnet == old.Subnet {
		next = c.New
	}
	n, err := r.repoint(old, next)
	if err != nil {
		r.log.Warn("cleaning up entries of a changed lease failed", zap.Stringer("lease", old.Subnet), zap.Error(err))
	}
	if n > 0 || err != nil {
		what := "removed"
		if next != nil {
			what = "re-pointed"
		}
		r.log.Info("lease "+what+"; kernel entries updated", zap.Stringer("lease", old.Subnet),
			zap.Stringer("old_vtep", old.PublicIP), zap.Stringer("old_vtep_mac", old.VtepMAC), zap.Int("entries", n))
	}
}

// repoint moves every entry pointing at old's VTEP to next's, or deletes it
// when next is nil. It returns the number of entries changed. Called with
// r.mu held.
func (r *Responder) repoint(old store.Lease, next *store.Lease) (int, error) {
	neighbours, err := r.kernel.Neighbours()
	if err != nil {
		return 0, err
	}
	fdb, err := r.kernel.FDB()
	if err != nil {
		return 0, err
	}
	var errs []error
	changed := 0
	oldMAC := net.HardwareAddr(old.VtepMAC[:])

	var stale []fabric.Neighbour
	for _, n := range neighbours {
		if old.Subnet.Contains(n.IP) || macIs(n.MAC, old.VtepMAC) {
			stale = append(stale, n)
		}
	}
	var oldFDB []fabric.FDBEntry
	for _, f := range fdb {
		if macIs(f.MAC, old.VtepMAC) {
			oldFDB = append(oldFDB, f)
		}
	}
	if next != nil && len(stale)+len(oldFDB) > 0 {
		// FDB first, as when answering: a neighbour pointing at a MAC with
		// no FDB entry drops the packets sent to it.
		if wrote, err := r.ensureFDB(*next); err != nil {
			errs = append(errs, err)
			next = nil // cannot re-point: delete, so the next packet misses afresh
		} else if wrote {
			changed++
		}
	}
	for _, n := range stale {
		if next != nil && next.Subnet.Contains(n.IP) && len(n.MAC) == 6 {
			if macIs(n.MAC, next.VtepMAC) {
				continue // only the public IP moved: the FDB entry did the work
			}
			err = r.kernel.SetNeigh(n.IP, next.VtepMAC)
		} else {
			err = r.kernel.DelNeigh(n.IP)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		changed++
	}
	for _, f := range oldFDB {
		if next != nil && next.VtepMAC == old.VtepMAC && next.PublicIP == f.Dst {
			continue // the entry ensureFDB just wrote or confirmed
		}
		if err := r.kernel.DelFDB(oldMAC, f.Dst); err != nil {
			errs = append(errs, err)
			continue
		}
		changed++
	}
	if next == nil {
		// The host route goes with the lease (the gateway stays the same
		// for a changed one: the subnet's first address).
		routes, err := r.kernel.Routes()
		if err != nil {
			errs = append(errs, err)
		}
		for _, rt := range routes {
			if rt.Dst == old.Subnet && rt.Via.IsValid() {
				if err := r.kernel.DelRoute(rt); err != nil {
					errs = append(errs, err)
					continue
				}
				changed++
			}
		}
		delete(r.hostRoutes, old.Subnet)
	}
	if next == nil || next.VtepMAC != old.VtepMAC {
		delete(r.fdb, old.VtepMAC)
	}
	return changed, errors.Join(errs...)
}

// installHostRoute points l's whole subnet at its first address: the
// neighbour entry of that address first, then the route. Called with r.mu
// held, after ensureFDB.
func (r *Responder) installHostRoute(l store.Lease) error {
	if err := r.kernel.SetNeigh(l.Gateway(), l.VtepMAC); err != nil {
		return err
	}
	if err := r.kernel.SetRoute(fabric.Route{Dst: l.Subnet, Via: l.Gateway()}, r.cfg.Gateway); err != nil {
		return err
	}
	r.hostRoutes[l.Subnet] = l.Gateway()
	return nil
}

// RestoreRoutes puts back the host routes the kernel lost, as it does when
// the device goes down. Call it when the device's routes were restored.
func (r *Responder) RestoreRoutes() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.hostRoutes) == 0 {
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
	for dst, via := range r.hostRoutes {
		rt := fabric.Route{Dst: dst, Via: via}
		if present[rt] {
			continue
		}
		if err := r.kernel.SetRoute(rt, r.cfg.Gateway); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ensureFDB installs l's FDB entry unless it is known to be there, and
// says whether it wrote (or tried to write) it.
func (r *Responder) ensureFDB(l store.Lease) (wrote bool, err error) {
	if r.fdb[l.VtepMAC] == l.PublicIP {
		return false, nil
	}
	if err := r.kernel.SetFDB(l.VtepMAC, l.PublicIP); err != nil {
		delete(r.fdb, l.VtepMAC)
		return true, err
	}
	r.fdb[l.VtepMAC] = l.PublicIP
	return true, nil
}

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
func (r *Responder) Reconcile() (Reconciled, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Reconciled
	var errs []error
	clear(r.fdb)
	clear(r.hostRoutes)
	r.reconciled = true

	routes, err := r.kernel.Routes()
	if err != nil {
		return res, err
	}
	for _, rt := range routes {
		if rt == r.overlayRoute() {
			res.Kept++
			continue
		}
		if l, ok := r.remoteLease(rt.Via); ok && r.cfg.Mode == AnswerHost && rt.Dst == l.Subnet && rt.Via == l.Gateway() {
			r.hostRoutes[rt.Dst] = rt.Via
			res.Kept++
			continue
		}
		if err := r.kernel.DelRoute(rt); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Removed++
	}

	fdb, err := r.kernel.FDB()
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	for _, f := range fdb {
		l, ok := r.leases.LookupMAC(store.MAC(f.MAC))
		switch {
		case ok && l.PublicIP == f.Dst && l.Subnet != r.cfg.Own && f.State&unix.NUD_PERMANENT != 0:
			r.fdb[l.VtepMAC] = l.PublicIP
			res.Kept++
		case ok && l.PublicIP == f.Dst && l.Subnet != r.cfg.Own:
			// Right place, but ageing (left by flanneld, say): make it
			// PERMANENT in place rather than delete and re-add it.
			if _, err := r.ensureFDB(l); err != nil {
				errs = append(errs, err)
				continue
			}
			res.Fixed++
		default:
			if err := r.kernel.DelFDB(f.MAC, f.Dst); err != nil {
				errs = append(errs, err)
				continue
			}
			res.Removed++
		}
	}

	neighbours, err := r.kernel.Neighbours()
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	for _, n := range neighbours {
		if n.State&unix.NUD_NOARP != 0 {
			continue // multicast and broadcast: the kernel's own entries
		}
		l, ok := r.remoteLease(n.IP)
		resolving := n.State&(unix.NUD_INCOMPLETE|unix.NUD_FAILED) != 0 || len(n.MAC) != 6
		if !ok {
			if resolving {
				continue // the kernel's own business; it will fail and go
			}
			if err := r.kernel.DelNeigh(n.IP); err != nil {
				errs = append(errs, err)
				continue
			}
			res.Removed++
			continue
		}
		switch {
		case resolving:
			res.Answered++
		case macIs(n.MAC, l.VtepMAC):
			// Even a right neighbour needs its FDB entry, which may have
			// been missing or wrong (and deleted above).
			if _, err := r.ensureFDB(l); err != nil {
				errs = append(errs, err)
				continue
			}
			res.Kept++
			continue
		default:
			res.Fixed++
		}
		if _, err := r.install(n.IP, l); err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
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
	answered := 0
	for _, n := range neighbours {
		if n.State&unix.NUD_INCOMPLETE == 0 {
			continue
		}
		l, ok := r.remoteLease(n.IP)
		if !ok {
			continue
		}
		// FDB entries and host routes one by one (one per peer, and
		// mostly there already); the addresses' entries in batches.
		_, done, err := r.prepare(n.IP, l)
		switch {
		case err != nil:
			errs = append(errs, err)
		case done:
			answered++
		default:
			writes = append(writes, fabric.NeighWrite{IP: n.IP, MAC: l.VtepMAC})
		}
	}
	ok, err := r.kernel.SetNeighs(writes)
	return answered + ok, errors.Join(append(errs, err)...)
}

// prepare makes l's VTEP reachable before a neighbour points at it: the
// FDB entry first (the neighbour write releases the queued packets at once,
// and a packet towards a MAC without an FDB entry is dropped), then in host
// mode the route to l's subnet through its first address, with that
// address's neighbour: from then on the whole subnet goes there without
// asking. It returns the kernel writes it made, and whether ip's own
// neighbour was one of them (ip is the first address). Called with r.mu
// held.
func (r *Responder) prepare(ip netip.Addr, l store.Lease) (writes int, done bool, err error) {
	if wrote, err := r.ensureFDB(l); wrote || err != nil {
		writes++
		if err != nil {
			return writes, false, err
		}
	}
	if r.cfg.Mode == AnswerHost && r.hostRoutes[l.Subnet] != l.Gateway() {
		writes += 2
		if err := r.installHostRoute(l); err != nil {
			return writes, false, err
		}
		return writes, ip == l.Gateway(), nil
	}
	return writes, false, nil
}

// install points ip at l's VTEP and returns the kernel writes it made.
// The address's own neighbour is written in either mode: the kernel queued
// the packet on its entry, and only a write to that entry releases it.
// Called with r.mu held.
func (r *Responder) install(ip netip.Addr, l store.Lease) (int, error) {
	writes, done, err := r.prepare(ip, l)
	if err != nil || done {
		return writes, err
	}
	return writes + 1, r.kernel.SetNeigh(ip, l.VtepMAC)
}

// remoteLease returns the lease of another host holding ip.
func (r *Responder) remoteLease(ip netip.Addr) (store.Lease, bool) {
	if !ip.Is4() || !r.cfg.Network.Contains(ip) || r.cfg.Own.Contains(ip) {
		return store.Lease{}, false
	}
	return r.leases.LookupIP(ip)
}

func macIs(hw net.HardwareAddr, m store.MAC) bool {
	return len(hw) == 6 && store.MAC(hw) == m
}
