package fabric

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrTableFull marks a write refused because the kernel's neighbour table is
// full (net.ipv4.neigh.default.gc_thresh3, or net.ipv6.neigh.default's for
// IPv6: one table per family for the whole kernel).
// The kernel says ENOBUFS, the same errno as a netlink socket overflow; the
// two have nothing else in common.
var ErrTableFull = errors.New("kernel neighbour table full (gc_thresh3)")

// Entries writes the neighbour and FDB entries of one VXLAN device. It owns
// a long-lived rtnetlink socket: opening one per write costs more than the
// write (kernel-notes.md). Entries is not safe for concurrent use.
//
// A device carries one family, IPv4 unless opened WithIPv6: its neighbour
// entries and routes are of that family, and Entries refuses an address of
// the other rather than write an entry its own dumps would never show. FDB
// destinations are the underlay's family, which may be either.
type Entries struct {
	h       *netlink.Handle
	w       *writer // the miss path's writes
	ifindex int
	name    string
	ipv6    bool
	// Direct routes (WithDirectRoutes): the underlay device's index, and
	// the overlay networks whose routes on it are vtepd's.
	underlay int
	networks []netip.Prefix

	writes    [numOps]atomic.Uint64
	errors    [numOps]atomic.Uint64
	tableFull [numOps]atomic.Uint64
}

// An EntriesOption tells Entries what it cannot learn from the device's
// index: the family the device carries, and where its direct routes go.
type EntriesOption func(*Entries)

// WithIPv6 says whether the device carries IPv6 (flannel-v6.<VNI>): its
// neighbour entries are AF_INET6 and its routes IPv6 ones.
func WithIPv6(ipv6 bool) EntriesOption { return func(e *Entries) { e.ipv6 = ipv6 } }

// WithDirectRoutes lets Entries write and list DirectRouting routes
// (Route.Direct): they go on the underlay device with the given index, and
// Routes lists, besides the device's own, the underlay's routes of the
// device's family whose destination lies inside one of networks (the
// overlay's), so that reconciliation and invalidation see them.
func WithDirectRoutes(underlayIndex int, networks ...netip.Prefix) EntriesOption {
	return func(e *Entries) {
		e.underlay = underlayIndex
		e.networks = append([]netip.Prefix(nil), networks...)
	}
}

// Op is a kind of kernel write.
type Op int

const (
	OpSetFDB Op = iota
	OpDelFDB
	OpSetNeigh
	OpDelNeigh
	OpSetRoute
	OpDelRoute
	numOps
)

var opNames = [numOps]string{"set_fdb", "del_fdb", "set_neigh", "del_neigh", "set_route", "del_route"}

func (o Op) String() string { return opNames[o] }

// Ops lists every kind of write, for metrics.
func Ops() []Op {
	ops := make([]Op, numOps)
	for i := range ops {
		ops[i] = Op(i)
	}
	return ops
}

// WriteStats counts one kind of write.
type WriteStats struct {
	Writes uint64 // attempted
	Errors uint64 // failed, table-full ones included
	// TableFull counts failures because the kernel's neighbour table was
	// full (ErrTableFull).
	TableFull uint64
}

// Stats returns the counts of op.
func (e *Entries) Stats(op Op) WriteStats {
	return WriteStats{Writes: e.writes[op].Load(), Errors: e.errors[op].Load(), TableFull: e.tableFull[op].Load()}
}

// count records one write of op and its outcome, and returns err.
func (e *Entries) count(op Op, err error) error {
	e.writes[op].Add(1)
	if err != nil {
		e.errors[op].Add(1)
		if errors.Is(err, ErrTableFull) {
			e.tableFull[op].Add(1)
		}
	}
	return err
}

// Neighbour is a neighbour entry on the device: IPv4 (ARP) or IPv6 (NDP).
type Neighbour struct {
	IP    netip.Addr
	MAC   net.HardwareAddr
	State int // NUD_* state
}

// FDBEntry is a unicast VXLAN forwarding entry: frames for MAC go to Dst,
// an address of the underlay's family (IPv4 or IPv6).
type FDBEntry struct {
	MAC   net.HardwareAddr
	Dst   netip.Addr
	State int
	// Unused is how long ago the VXLAN driver last sent a frame through
	// the entry: its transmit path stamps the entry's "used" time on every
	// frame, the fast path included (unlike a neighbour entry's, which the
	// cached hardware header bypasses). It is how vtepd tells an idle peer.
	Unused time.Duration
}

// OpenEntries opens a writer for the device with the given index in the
// calling thread's network namespace.
func OpenEntries(ifindex int, name string, opts ...EntriesOption) (*Entries, error) {
	return OpenEntriesAt(netns.None(), ifindex, name, opts...)
}

// OpenEntriesAt opens a writer for a device in network namespace ns.
func OpenEntriesAt(ns netns.NsHandle, ifindex int, name string, opts ...EntriesOption) (*Entries, error) {
	e := &Entries{ifindex: ifindex, name: name}
	for _, o := range opts {
		o(e)
	}
	for _, n := range e.networks {
		if !n.IsValid() {
			return nil, fmt.Errorf("fabric: direct routes of %s: invalid overlay network", name)
		}
	}
	h, err := openHandle(ns)
	if err != nil {
		return nil, err
	}
	w, err := newWriter(ns, ifindex)
	if err != nil {
		h.Close()
		return nil, err
	}
	e.h, e.w = h, w
	return e, nil
}

// IPv6 reports whether the device carries IPv6 (WithIPv6).
func (e *Entries) IPv6() bool { return e.ipv6 }

// Close releases the sockets.
func (e *Entries) Close() error {
	e.h.Close()
	return e.w.close()
}

// NeighWrite is one neighbour entry to set: IP resolves to MAC, PERMANENT
// or else REACHABLE (see SetNeigh).
type NeighWrite struct {
	IP        netip.Addr
	MAC       [6]byte
	Permanent bool
}

// SetNeighs sets many neighbour entries, up to 128 to a
// datagram: answering a storm's worth of misses at once costs a few system
// calls, not thousands. It returns how many the kernel took, and the errors
// of the others: one per refused write, one per batch that could not be
// sent or acknowledged at all.
func (e *Entries) SetNeighs(writes []NeighWrite) (ok int, err error) {
	var errs []error
	for start := 0; start < len(writes); start += maxBatch {
		batch := writes[start:min(start+maxBatch, len(writes))]
		// sent[j] is the index in batch of the j-th message queued: a
		// write of the wrong family is refused here, not sent.
		var sent [maxBatch]uint8
		n := 0
		for i, nw := range batch {
			ip, verr := e.neighAddr(nw.IP)
			if verr != nil {
				e.writes[OpSetNeigh].Add(1)
				e.errors[OpSetNeigh].Add(1)
				errs = append(errs, e.invalid(verr, "set neighbour %s→%s", nw.IP, macString(nw.MAC)))
				continue
			}
			e.w.neigh(ip, nw.MAC, nw.Permanent)
			sent[n] = uint8(i)
			n++
		}
		if n == 0 {
			continue
		}
		err := e.w.flush()
		e.writes[OpSetNeigh].Add(uint64(n))
		if err != nil {
			e.errors[OpSetNeigh].Add(uint64(n))
			errs = append(errs, e.wrap(err, "set %d neighbours", n))
			continue
		}
		ok += n - len(e.w.failed)
		e.errors[OpSetNeigh].Add(uint64(len(e.w.failed)))
		for _, f := range e.w.failed {
			nw := batch[sent[f.i]]
			errs = append(errs, e.wrap(f.errno, "set neighbour %s→%s", nw.IP, macString(nw.MAC)))
		}
	}
	for _, err := range errs {
		if errors.Is(err, ErrTableFull) {
			e.tableFull[OpSetNeigh].Add(1)
		}
	}
	return ok, errors.Join(errs...)
}

// flushOne sends the one queued write and returns its error.
func (e *Entries) flushOne() error {
	if err := e.w.flush(); err != nil {
		return err
	}
	if len(e.w.failed) > 0 {
		return e.w.failed[0].errno
	}
	return nil
}

// SetFDB makes frames for mac go to dst, replacing any other destination.
// MACs are passed by value on the miss path: a slice would make its
// caller's lease escape to the heap, one allocation per miss.
// The entry is PERMANENT: the kernel's FDB ageing runs on the time an entry
// was written, not used, so a REACHABLE entry expires under steady traffic
// and costs a dropped packet each time. vtepd removes entries itself when
// their lease goes.
//
// dst is the peer's underlay address, IPv4 or IPv6: the device's underlay
// family, whatever the overlay's (the kernel refuses the other with
// EAFNOSUPPORT).
func (e *Entries) SetFDB(mac [6]byte, dst netip.Addr) error {
	dst, err := fdbAddr(dst)
	if err != nil {
		return e.count(OpSetFDB, e.invalid(err, "set fdb %s→%s", macString(mac), dst))
	}
	e.w.fdb(mac, dst)
	if err := e.flushOne(); err != nil {
		return e.count(OpSetFDB, e.wrap(err, "set fdb %s→%s", macString(mac), dst))
	}
	return e.count(OpSetFDB, nil)
}

// SetFDBAndNeigh is SetFDB(mac, dst) and then SetNeigh(ip, mac, permanent)
// in one datagram, one system call each way instead of two: the answer to
// an L3 miss. The kernel applies the FDB entry first, so the packets the
// kernel queued on ip's entry, released by the neighbour write, find it in
// place. Each write's failure is its own error. The two are not a
// transaction: a neighbour write goes in even when the FDB write before it
// failed (the first packet is then lost to the missing FDB entry, and the
// kernel says so with an L2 miss); if either address is invalid, neither
// is written.
func (e *Entries) SetFDBAndNeigh(mac [6]byte, dst, ip netip.Addr, permanent bool) (fdbErr, neighErr error) {
	dst, fdbErr = fdbAddr(dst)
	ip, neighErr = e.neighAddr(ip)
	if fdbErr != nil || neighErr != nil {
		if fdbErr != nil {
			fdbErr = e.invalid(fdbErr, "set fdb %s→%s", macString(mac), dst)
		} else {
			fdbErr = fmt.Errorf("fabric: set fdb %s→%s on %s: not sent, as the neighbour entry of the pair is invalid", macString(mac), dst, e.name)
		}
		if neighErr != nil {
			neighErr = e.invalid(neighErr, "set neighbour %s→%s", ip, macString(mac))
		} else {
			neighErr = fmt.Errorf("fabric: set neighbour %s→%s on %s: not sent, as the FDB entry of the pair is invalid", ip, macString(mac), e.name)
		}
		return e.count(OpSetFDB, fdbErr), e.count(OpSetNeigh, neighErr)
	}
	e.w.fdb(mac, dst)
	e.w.neigh(ip, mac, permanent)
	if err := e.w.flush(); err != nil {
		return e.count(OpSetFDB, e.wrap(err, "set fdb %s→%s", macString(mac), dst)),
			e.count(OpSetNeigh, e.wrap(err, "set neighbour %s→%s", ip, macString(mac)))
	}
	for _, f := range e.w.failed {
		if f.i == 0 {
			fdbErr = e.wrap(f.errno, "set fdb %s→%s", macString(mac), dst)
		} else {
			neighErr = e.wrap(f.errno, "set neighbour %s→%s", ip, macString(mac))
		}
	}
	return e.count(OpSetFDB, fdbErr), e.count(OpSetNeigh, neighErr)
}

// DelFDB removes the entry for mac towards dst. Removing an entry that is
// not there is not an error.
func (e *Entries) DelFDB(mac net.HardwareAddr, dst netip.Addr) error {
	if err := e.h.NeighDel(e.fdb(mac, dst)); err != nil && !errors.Is(err, unix.ENOENT) {
		return e.count(OpDelFDB, e.wrap(err, "delete fdb %s→%s", mac, dst))
	}
	return e.count(OpDelFDB, nil)
}

// SetNeigh makes ip resolve to mac. Set on an INCOMPLETE entry, this
// releases the packets the kernel queued on it within this call.
//
// A PERMANENT entry never ages: traffic through it goes on however long
// nobody answers the kernel's questions (vtepd stopped, upgraded, stuck),
// and it does not count against the kernel's neighbour table limit
// (gc_thresh3), which means the kernel never collects it either: its owner
// removes it. A REACHABLE one ages to STALE and, used again, is
// re-confirmed by a PROBE miss; the kernel collects it when idle.
func (e *Entries) SetNeigh(ip netip.Addr, mac [6]byte, permanent bool) error {
	ip, err := e.neighAddr(ip)
	if err != nil {
		return e.count(OpSetNeigh, e.invalid(err, "set neighbour %s→%s", ip, macString(mac)))
	}
	e.w.neigh(ip, mac, permanent)
	if err := e.flushOne(); err != nil {
		return e.count(OpSetNeigh, e.wrap(err, "set neighbour %s→%s", ip, macString(mac)))
	}
	return e.count(OpSetNeigh, nil)
}

// DelNeigh removes the neighbour entry for ip. Removing an entry that is not
// there is not an error.
func (e *Entries) DelNeigh(ip netip.Addr) error {
	ip, err := e.neighAddr(ip)
	if err != nil {
		return e.count(OpDelNeigh, e.invalid(err, "delete neighbour %s", ip))
	}
	n := &netlink.Neigh{LinkIndex: e.ifindex, Family: e.family(), IP: ip.AsSlice()}
	if err := e.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		return e.count(OpDelNeigh, e.wrap(err, "delete neighbour %s", ip))
	}
	return e.count(OpDelNeigh, nil)
}

// Neighbours lists the device's neighbour entries of its family (IPv4, or
// IPv6 for a device opened WithIPv6). The kernel's own IPv6 multicast
// entries (ff02::…, NOARP, on every IPv6-capable device) are left out.
func (e *Entries) Neighbours() ([]Neighbour, error) {
	out, err := listNeighbours(e.h, e.ifindex, e.family())
	if err != nil {
		return nil, e.wrap(err, "dump")
	}
	return out, nil
}

// FDB lists the device's unicast forwarding entries that have a destination
// (IPv4 or IPv6). The device's own multicast addresses, which the kernel
// lists too, are left out.
func (e *Entries) FDB() ([]FDBEntry, error) {
	out, err := listFDB(e.h, e.ifindex)
	if err != nil {
		return nil, e.wrap(err, "dump")
	}
	return out, nil
}

func (e *Entries) fdb(mac net.HardwareAddr, dst netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    e.ifindex,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           dst.Unmap().AsSlice(),
		HardwareAddr: mac,
	}
}

// family is the device's neighbour family.
func (e *Entries) family() int {
	if e.ipv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// Why an address is not written. Static errors: the checks run on the miss
// path, and must not allocate when they pass.
var (
	errNotIPv4    = errors.New("not an IPv4 address (the device carries IPv4)")
	errNotIPv6    = errors.New("not an IPv6 address (the device carries IPv6; an IPv4 overlay's device is opened without fabric.WithIPv6)")
	errInvalidDst = errors.New("not an IPv4 or IPv6 address")
)

// neighAddr checks that ip is of the device's family, and unmaps it.
func (e *Entries) neighAddr(ip netip.Addr) (netip.Addr, error) {
	ip = ip.Unmap()
	switch {
	case e.ipv6 && !ip.Is6():
		return ip, errNotIPv6
	case !e.ipv6 && !ip.Is4():
		return ip, errNotIPv4
	}
	return ip, nil
}

// fdbAddr checks that dst is an address, and unmaps it.
func fdbAddr(dst netip.Addr) (netip.Addr, error) {
	if !dst.IsValid() {
		return dst, errInvalidDst
	}
	return dst.Unmap(), nil
}

// invalid is the error of a write refused before it was sent.
func (e *Entries) invalid(err error, format string, args ...any) error {
	return fmt.Errorf("fabric: %s on %s: %w", fmt.Sprintf(format, args...), e.name, err)
}

func (e *Entries) wrap(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if errors.Is(err, unix.ENOBUFS) {
		return fmt.Errorf("fabric: %s on %s: %w: %w", what, e.name, ErrTableFull, err)
	}
	return fmt.Errorf("fabric: %s on %s: %w", what, e.name, err)
}

// listRetrying repeats a dump that the kernel interrupted because the table
// changed under it; such a dump may have skipped entries.
func listRetrying[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		out, err := dump()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 10 {
			continue
		}
		return out, err
	}
}

// macString formats a MAC for an error. Formatting net.HardwareAddr(mac[:])
// in place would make mac escape, and every write allocate, error or not.
func macString(mac [6]byte) string { return net.HardwareAddr(mac[:]).String() }
