package miss

// Following the lease table: what vtepd installed for a lease goes, or is
// re-pointed, when the lease goes or changes.

import (
	"errors"
	"net"

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
	var oldPart, newPart store.Part
	var hadOld, hasNew bool
	if c.Old != nil {
		oldPart, hadOld = r.part(*c.Old)
	}
	if c.New != nil {
		newPart, hasNew = r.part(*c.New)
	}
	if !hadOld {
		// New in this family (a new lease, or one gaining this family's
		// part): nothing installed to fix, but peers may be waiting.
		r.mu.Lock()
		sweep := r.reconciled && r.cfg.Sweep != nil && hasNew && newPart.Subnet != r.cfg.Own
		r.mu.Unlock()
		if sweep {
			r.cfg.Sweep()
		}
		return
	}
	if hasNew && oldPart == newPart {
		return // a new revision, or another family's change: no entry of ours changes
	}
	old := oldPart
	if old.Subnet == r.cfg.Own {
		return // nothing is ever installed for our own subnet
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var next *store.Part
	if hasNew && newPart.Subnet == old.Subnet {
		next = &newPart
	}
	n, err := r.repoint(old, next, false)
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
// when next is nil. keepDirect leaves a direct route in place (an idle
// peer's: direct traffic leaves no trace in the FDB entry's used time, so
// it is no sign of idleness). It returns the number of entries changed.
// Called with r.mu held.
func (r *Responder) repoint(old store.Part, next *store.Part, keepDirect bool) (int, error) {
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
			// Re-pointed as it was: a PERMANENT entry stays one.
			err = r.kernel.SetNeigh(n.IP, next.VtepMAC, n.State&unix.NUD_PERMANENT != 0)
		} else if err = r.kernel.DelNeigh(n.IP); err == nil && n.State&unix.NUD_PERMANENT != 0 {
			r.permanent--
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
	if next == nil || next.PublicIP != old.PublicIP {
		// The host route goes with the lease (the gateway stays the same
		// for a changed one: the subnet's first address); a direct route
		// goes with it too, or follows a new public IP if DirectRouting
		// still reaches it.
		routes, err := r.kernel.Routes()
		if err != nil {
			errs = append(errs, err)
		}
		for _, rt := range routes {
			if rt.Dst != old.Subnet || !rt.Via.IsValid() {
				continue
			}
			switch {
			case rt.Direct && keepDirect:
				continue
			case rt.Direct && next != nil && r.reachedDirectly(*next):
				err = r.installDirectRoute(*next)
			case rt.Direct:
				delete(r.directRoutes, old.Subnet)
				err = r.kernel.DelRoute(rt)
			case next != nil:
				continue // the host route's gateway stays the subnet's first address
			default:
				err = r.kernel.DelRoute(rt)
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			changed++
		}
		if next == nil {
			delete(r.hostRoutes, old.Subnet)
		}
	}
	if next == nil || next.VtepMAC != old.VtepMAC {
		delete(r.fdb, old.VtepMAC)
	}
	return changed, errors.Join(errs...)
}
