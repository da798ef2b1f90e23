package miss

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
)

// Leases is what the responder asks about addresses and MACs; *store.Table
// implements it.
type Leases interface {
	LookupIP(netip.Addr) (store.Lease, bool)
	LookupMAC(store.MAC) (store.Lease, bool)
}

// Kernel is the device's entries as the responder reads and writes them;
// *fabric.Entries implements it.
type Kernel interface {
	SetFDB(mac [6]byte, dst netip.Addr) error
	DelFDB(mac net.HardwareAddr, dst netip.Addr) error
	SetNeigh(ip netip.Addr, mac [6]byte, permanent bool) error
	// SetFDBAndNeigh is SetFDB and then SetNeigh in one datagram, the
	// FDB entry first; each failure is its own error.
	SetFDBAndNeigh(mac [6]byte, dst, ip netip.Addr, permanent bool) (fdbErr, neighErr error)
	// SetNeighs sets many neighbour entries at once, for sweeps, and
	// returns how many the kernel took.
	SetNeighs(writes []fabric.NeighWrite) (int, error)
	DelNeigh(ip netip.Addr) error
	Neighbours() ([]fabric.Neighbour, error)
	FDB() ([]fabric.FDBEntry, error)
	SetRoute(r fabric.Route, src netip.Addr) error
	DelRoute(r fabric.Route) error
	Routes() ([]fabric.Route, error)
}

// AnswerMode is what an L3 miss installs.
type AnswerMode uint8

const (
	// AnswerAddress installs the neighbour entry of the address asked
	// about, and nothing else: one kernel entry per contacted address.
	AnswerAddress AnswerMode = iota
	// AnswerHost installs, on the first miss for any address of a peer,
	// a route for the peer's whole subnet via its first address (on-link)
	// and that address's neighbour entry, so that later traffic to the
	// peer misses no more: one neighbour entry per contacted host, which
	// keeps far below the kernel's table limit (gc_thresh3).
	AnswerHost
)

func (m AnswerMode) String() string {
	if m == AnswerHost {
		return "host"
	}
	return "address"
}

// ParseAnswerMode parses "address" or "host".
func ParseAnswerMode(s string) (AnswerMode, error) {
	switch s {
	case "address":
		return AnswerAddress, nil
	case "host":
		return AnswerHost, nil
	}
	return 0, fmt.Errorf("%q is not an answer mode: want address or host", s)
}

// Outcome is what became of a miss.
type Outcome uint8

const (
	// Answered: the entries were installed.
	Answered Outcome = iota
	// OwnSubnet: the address is this host's; it is not ours to answer.
	OwnSubnet
	// NoLease: no lease holds the address or MAC.
	NoLease
	// OutsideOverlay: the address is not in the overlay network (the
	// kernel's IPv6 link-local misses, for one).
	OutsideOverlay
	// Failed: a kernel write failed.
	Failed
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"answered", "own_subnet", "no_lease", "outside_overlay", "error"}

func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Outcomes lists every outcome, for metrics.
func Outcomes() []Outcome {
	out := make([]Outcome, numOutcomes)
	for i := range out {
		out[i] = Outcome(i)
	}
	return out
}

// Result is the responder's account of one miss.
type Result struct {
	Outcome Outcome
	// Lease is the part, in the device's family, of the lease that
	// answered (Answered, Failed).
	Lease store.Part
	// Writes is the number of kernel writes made.
	Writes int
	// Latency runs from the message's receipt to the kernel's ack of the
	// last write.
	Latency time.Duration
	Err     error
}

// ResponderConfig describes the device a Responder answers for.
type ResponderConfig struct {
	// Ifindex is the VXLAN device's index; misses on other devices are
	// not ours.
	Ifindex int
	// Network is the whole overlay in the device's family: an IPv4
	// network for flannel.<VNI>, an IPv6 one for flannel-v6.<VNI>. Lease
	// parts of the other family are not this responder's.
	Network netip.Prefix
	// Own is this host's subnet.
	Own netip.Prefix
	// Gateway is this host's own address on the device (its subnet's first
	// address), the source of host routes.
	Gateway netip.Addr
	// Mode is what an L3 miss installs.
	Mode AnswerMode
	// Observe, if set, is told of every miss for the device once it has
	// been answered (or not), on the listener's goroutine: metrics and the
	// recent-miss log hang here. It must be quick and must not keep m.
	Observe func(m *Miss, res Result)
	// Sweep, if set, asks for a Sweep soon, without blocking. It is called
	// when a lease appears: a peer may have sent to the new host before its
	// lease was known, and the kernel asks again only a second later.
	Sweep func()
	// Direct, if set, says whether a peer's public IP is reached without
	// VXLAN (flannel's DirectRouting: on the same subnet as this host's
	// underlay address). A peer it says yes to gets, on its first miss, a
	// route for its subnet via its public IP on the underlay (fabric's
	// Direct route): later packets go there unencapsulated, as flanneld
	// with DirectRouting sends them. The first packet, queued on the
	// neighbour entry the miss is about, still goes through the VXLAN
	// device, which every host has.
	Direct func(publicIP netip.Addr) bool
	// NeighbourLimit is how many PERMANENT neighbour entries the responder
	// keeps on the device (0: DefaultNeighbourLimit). Answers are PERMANENT,
	// so that established traffic outlives any absence of vtepd; such
	// entries escape the kernel's table limit (gc_thresh3) and its garbage
	// collection, so this limit stands in for it. Past it, answers are
	// REACHABLE: they age, are re-confirmed by PROBE misses while used, and
	// count against gc_thresh3 like any other entry.
	NeighbourLimit int
}

// DefaultNeighbourLimit is the kernel's default gc_thresh3.
const DefaultNeighbourLimit = 1024

// Responder answers misses for one VXLAN device.
type Responder struct {
	cfg    ResponderConfig
	ipv6   bool // the device's family: its network's
	leases Leases
	kernel Kernel
	log    *zap.Logger

	// mu serialises answering against invalidation, so that an answer
	// built from a lease that has just been removed cannot land after the
	// removal's cleanup.
	mu sync.Mutex
	// fdb is the FDB entries known to be installed: VTEP MAC -> public IP.
	// An L3 answer skips the FDB write when it is already there.
	fdb map[store.MAC]netip.Addr
	// hostRoutes is the host routes installed (AnswerHost): subnet -> via.
	hostRoutes map[netip.Prefix]netip.Addr
	// directRoutes is the direct routes installed (Direct): subnet -> the
	// peer's public IP.
	directRoutes map[netip.Prefix]netip.Addr
	// reconciled is set once Reconcile has run: before, the table is
	// loading and a new lease is no reason to sweep.
	reconciled bool
	// permanent is how many PERMANENT neighbour entries the device holds,
	// as of the last count plus the writes since; permanentWrites counts
	// every PERMANENT write, so that a count taken outside r.mu can be
	// brought up to date (see recount).
	permanent, permanentWrites int

	counts [3][numOutcomes]atomic.Uint64 // by Kind (index 1, 2) and Outcome
}

// NewResponder returns a responder that looks leases up in leases and
// writes through kernel.
func NewResponder(cfg ResponderConfig, leases Leases, kernel Kernel, log *zap.Logger) *Responder {
	if cfg.NeighbourLimit <= 0 {
		cfg.NeighbourLimit = DefaultNeighbourLimit
	}
	return &Responder{cfg: cfg, ipv6: cfg.Network.Addr().Is6(), leases: leases, kernel: kernel, log: log,
		fdb: make(map[store.MAC]netip.Addr), hostRoutes: make(map[netip.Prefix]netip.Addr),
		directRoutes: make(map[netip.Prefix]netip.Addr)}
}

// Count returns how many misses of kind ended with outcome.
func (r *Responder) Count(kind Kind, o Outcome) uint64 {
	if kind != L2 && kind != L3 || o >= numOutcomes {
		return 0
	}
	return r.counts[kind][o].Load()
}
