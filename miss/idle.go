package miss

// Forgetting idle peers. Answers are PERMANENT (ResponderConfig.
// NeighbourLimit says why), so the kernel never lets them go: the responder
// must, or the device would hold an entry for every address ever contacted.
//
// What tells an idle peer is its FDB entry's "used" time, which the VXLAN
// driver stamps on every frame it sends through the entry, on the fast path
// too (fabric.FDBEntry.Unused). A neighbour entry's own "used" time is no
// signal: traffic through an entry whose hardware header is cached never
// touches it (kernel-notes.md). So idleness is per peer host, not per
// address: once nothing has been sent to a peer for the idle time, every
// entry pointing at it goes, and the next packet for it misses and is
// answered afresh, the first packet delivered as always.

import (
	"errors"
	"time"

	"github.com/vtepd/vtepd/store"
	"golang.org/x/sys/unix"
)

// Expired counts what ExpireIdle removed.
type Expired struct {
	// Peers is how many idle peers' entries went, Entries how many kernel
	// entries that was (neighbours, FDB entries and host routes).
	Peers, Entries int
}

// ExpireIdle removes the entries of every peer the device has sent nothing
// to for at least idle, and counts the device's PERMANENT neighbour entries
// afresh. Run it periodically.
func (r *Responder) ExpireIdle(idle time.Duration) (Expired, error) {
	// The dump that finds idle peers needs no r.mu (see Sweep); the one
	// that removes a peer's entries takes it (repoint).
	fdb, err := r.kernel.FDB()
	if err != nil {
		return Expired{}, err
	}
	var res Expired
	var errs []error
	r.mu.Lock()
	for _, f := range fdb {
		mac := store.MAC(f.MAC)
		if f.Unused < idle || len(f.MAC) != 6 || r.fdb[mac] != f.Dst {
			continue // in use, or not vtepd's (it never wrote or kept it)
		}
		l, ok := r.lookupMAC(mac)
		if !ok || l.PublicIP != f.Dst {
			continue // the lease is gone or changed: ApplyChange's business
		}
		n, err := r.repoint(l, nil, true)
		if err != nil {
			errs = append(errs, err)
		}
		res.Peers++
		res.Entries += n
	}
	r.mu.Unlock()
	if err := r.recount(); err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// recount counts the device's PERMANENT neighbour entries from a dump:
// entries the kernel lost (a device set down loses them all) or someone
// deleted would otherwise stay counted against the limit. The dump is taken
// outside r.mu; the PERMANENT writes made meanwhile are added, which may
// count one twice until the next recount: on the side of the limit.
func (r *Responder) recount() error {
	r.mu.Lock()
	before := r.permanentWrites
	r.mu.Unlock()
	neighbours, err := r.kernel.Neighbours()
	if err != nil {
		return err
	}
	n := 0
	for _, e := range neighbours {
		if e.State&unix.NUD_PERMANENT != 0 {
			n++
		}
	}
	r.mu.Lock()
	r.permanent = n + r.permanentWrites - before
	r.mu.Unlock()
	return nil
}

// Permanent returns how many PERMANENT neighbour entries the device holds,
// as last counted.
func (r *Responder) Permanent() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.permanent
}
