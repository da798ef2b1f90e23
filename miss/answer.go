package miss

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The answer path: one miss, from the listener's handler to the kernel
// writes that answer it. Everything a miss goes through is in this file,
// in the order it goes through it.

// Handle answers m if it is for our device, and logs it at debug level. It
// is the function to pass to Listener.Run.
func (r *Responder) Handle(m *Miss) {
	if m.Ifindex != r.cfg.Ifindex {
		return
	}
	res := r.Answer(m)
	if r.cfg.Observe != nil {
		r.cfg.Observe(m, res)
	}
	if ce := r.log.Check(zapcore.DebugLevel, "miss"); ce != nil {
		ce.Write(missFields(m, res)...)
	}
}

// Answer answers one miss for our device with the fewest kernel writes and
// counts it.
func (r *Responder) Answer(m *Miss) Result {
	var res Result
	switch m.Kind {
	case L3:
		res = r.answerL3(m)
	case L2:
		res = r.answerL2(m)
	}
	res.Latency = time.Since(m.Received)
	if m.Kind == L2 || m.Kind == L3 {
		r.counts[m.Kind][res.Outcome].Add(1)
	}
	return res
}

func (r *Responder) answerL3(m *Miss) Result {
	switch {
	case !r.cfg.Network.Contains(m.IP):
		return Result{Outcome: OutsideOverlay}
	case r.cfg.Own.Contains(m.IP):
		return Result{Outcome: OwnSubnet}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.lookupIP(m.IP)
	if !ok {
		return Result{Outcome: NoLease}
	}
	res := Result{Outcome: Answered, Lease: l}
	var err error
	if res.Writes, err = r.install(m.IP, l); err != nil {
		res.Outcome, res.Err = Failed, err
	}
	return res
}

func (r *Responder) answerL2(m *Miss) Result {
	if !m.HasMAC {
		return Result{Outcome: NoLease}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.lookupMAC(m.MAC)
	if !ok {
		return Result{Outcome: NoLease}
	}
	if r.cfg.Own.Contains(l.Subnet.Addr()) {
		return Result{Outcome: OwnSubnet, Lease: l}
	}
	// The kernel says the entry is missing, whatever r.fdb believes (it
	// may have been deleted behind our back): write it.
	delete(r.fdb, l.VtepMAC)
	res := Result{Outcome: Answered, Lease: l, Writes: 1}
	if _, err := r.ensureFDB(l); err != nil {
		res.Outcome, res.Err = Failed, err
	}
	return res
}

func missFields(m *Miss, res Result) []zap.Field {
	f := make([]zap.Field, 0, 9)
	f = append(f, zap.Stringer("kind", m.Kind))
	if m.IP.IsValid() {
		f = append(f, zap.Stringer("ip", m.IP))
	}
	if m.HasMAC {
		f = append(f, zap.Stringer("mac", m.MAC))
	}
	f = append(f, zap.String("state", StateString(m.State)), zap.Stringer("outcome", res.Outcome))
	if res.Lease.Subnet.IsValid() {
		f = append(f, zap.Stringer("lease", res.Lease.Subnet), zap.Stringer("vtep", res.Lease.PublicIP), zap.Stringer("vtep_mac", res.Lease.VtepMAC))
	}
	f = append(f, zap.Int("writes", res.Writes), zap.Duration("latency", res.Latency))
	if res.Err != nil {
		f = append(f, zap.Error(res.Err))
	}
	return f
}

// prepare makes l's VTEP reachable before a neighbour points at it: the
// FDB entry first (the neighbour write releases the queued packets at once,
// and a packet towards a MAC without an FDB entry is dropped), then in host
// mode the route to l's subnet through its first address, with that
// address's neighbour: from then on the whole subnet goes there without
// asking. It returns the kernel writes it made, and whether ip's own
// neighbour was one of them (ip is the first address). Called with r.mu
// held.
func (r *Responder) prepare(ip netip.Addr, l store.Part) (writes int, done bool, err error) {
	if wrote, err := r.ensureFDB(l); wrote || err != nil {
		writes++
		if err != nil {
			return writes, false, err
		}
	}
	if r.needsDirectRoute(l) {
		// Later packets to the peer take the route; the one the kernel
		// queued on ip's entry is released by ip's neighbour, below,
		// through the VXLAN device and the FDB entry just made.
		writes++
		if err := r.installDirectRoute(l); err != nil {
			return writes, false, err
		}
	}
	if r.needsHostRoute(l) {
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
func (r *Responder) install(ip netip.Addr, l store.Part) (int, error) {
	if !r.needsHostRoute(l) && !r.needsDirectRoute(l) {
		if r.fdb[l.VtepMAC] == l.PublicIP {
			// A later address of a known peer, the common case: its
			// neighbour alone, without prepare's second look at the FDB.
			return 1, r.setNeigh(ip, l.VtepMAC)
		}
		// The first answer for a peer: its FDB entry and the address's
		// neighbour in one datagram, the FDB entry first, half the system
		// calls of two writes.
		permanent := r.permanent < r.cfg.NeighbourLimit
		fdbErr, neighErr := r.kernel.SetFDBAndNeigh(l.VtepMAC, l.PublicIP, ip, permanent)
		r.noteFDB(l, fdbErr)
		if neighErr == nil {
			r.countPermanent(permanent, 1)
		}
		return 2, errors.Join(fdbErr, neighErr)
	}
	writes, done, err := r.prepare(ip, l)
	if err != nil || done {
		return writes, err
	}
	return writes + 1, r.setNeigh(ip, l.VtepMAC)
}

// needsHostRoute says whether answering for l installs its host route
// first (host mode, not installed yet). A peer reached directly needs none.
func (r *Responder) needsHostRoute(l store.Part) bool {
	return r.cfg.Mode == AnswerHost && r.hostRoutes[l.Subnet] != l.Gateway() && !r.reachedDirectly(l)
}

// reachedDirectly says whether l's peer is reached without VXLAN
// (ResponderConfig.Direct).
func (r *Responder) reachedDirectly(l store.Part) bool {
	return r.cfg.Direct != nil && r.cfg.Direct(l.PublicIP)
}

// needsDirectRoute says whether answering for l installs its direct route
// (not installed yet).
func (r *Responder) needsDirectRoute(l store.Part) bool {
	return r.reachedDirectly(l) && r.directRoutes[l.Subnet] != l.PublicIP
}

// installDirectRoute routes l's subnet via its public IP on the underlay.
// Called with r.mu held.
func (r *Responder) installDirectRoute(l store.Part) error {
	if err := r.kernel.SetRoute(directRoute(l), r.cfg.Gateway); err != nil {
		return err
	}
	r.directRoutes[l.Subnet] = l.PublicIP
	return nil
}

func directRoute(l store.Part) fabric.Route {
	return fabric.Route{Dst: l.Subnet, Via: l.PublicIP, Direct: true}
}

// setNeigh writes ip's neighbour entry: PERMANENT while the device holds
// fewer than the limit, else REACHABLE (ResponderConfig.NeighbourLimit).
// Called with r.mu held.
func (r *Responder) setNeigh(ip netip.Addr, mac store.MAC) error {
	permanent := r.permanent < r.cfg.NeighbourLimit
	if err := r.kernel.SetNeigh(ip, mac, permanent); err != nil {
		return err
	}
	r.countPermanent(permanent, 1)
	return nil
}

// countPermanent records n PERMANENT writes, if permanent. Called with
// r.mu held.
func (r *Responder) countPermanent(permanent bool, n int) {
	if permanent {
		r.permanent += n
		r.permanentWrites += n
	}
}

// ensureFDB installs l's FDB entry unless it is known to be there, and
// says whether it wrote (or tried to write) it.
func (r *Responder) ensureFDB(l store.Part) (wrote bool, err error) {
	if r.fdb[l.VtepMAC] == l.PublicIP {
		return false, nil
	}
	err = r.kernel.SetFDB(l.VtepMAC, l.PublicIP)
	r.noteFDB(l, err)
	return true, err
}

// noteFDB records the outcome of writing l's FDB entry: known installed,
// or not known at all (a failed write may have left anything).
func (r *Responder) noteFDB(l store.Part, err error) {
	if err != nil {
		delete(r.fdb, l.VtepMAC)
		return
	}
	r.fdb[l.VtepMAC] = l.PublicIP
}

// installHostRoute points l's whole subnet at its first address: the
// neighbour entry of that address first, then the route. Called with r.mu
// held, after ensureFDB.
func (r *Responder) installHostRoute(l store.Part) error {
	if err := r.setNeigh(l.Gateway(), l.VtepMAC); err != nil {
		return err
	}
	if err := r.kernel.SetRoute(fabric.Route{Dst: l.Subnet, Via: l.Gateway()}, r.cfg.Gateway); err != nil {
		return err
	}
	r.hostRoutes[l.Subnet] = l.Gateway()
	return nil
}

// remoteLease returns the part, in the responder's family, of another
// host's lease holding ip.
func (r *Responder) remoteLease(ip netip.Addr) (store.Part, bool) {
	if !r.cfg.Network.Contains(ip) || r.cfg.Own.Contains(ip) {
		return store.Part{}, false
	}
	return r.lookupIP(ip)
}

// lookupIP returns the part, in the responder's family, of the lease
// holding ip.
func (r *Responder) lookupIP(ip netip.Addr) (store.Part, bool) {
	l, ok := r.leases.LookupIP(ip)
	if !ok {
		return store.Part{}, false
	}
	return r.part(l)
}

// lookupMAC returns the part, in the responder's family, of the lease
// whose VTEP MAC in that family is mac.
func (r *Responder) lookupMAC(mac store.MAC) (store.Part, bool) {
	l, ok := r.leases.LookupMAC(mac)
	if !ok {
		return store.Part{}, false
	}
	p, ok := r.part(l)
	return p, ok && p.VtepMAC == mac
}

// part is l's part in the responder's family: a responder answers for one
// device, and a device carries one family (flannel.<VNI> IPv4,
// flannel-v6.<VNI> IPv6).
func (r *Responder) part(l store.Lease) (store.Part, bool) {
	if r.ipv6 {
		return l.IPv6()
	}
	return l.IPv4()
}

func macIs(hw net.HardwareAddr, m store.MAC) bool {
	return len(hw) == 6 && store.MAC(hw) == m
}
