// Package agent runs one vtepd: it wires the lease store, the VXLAN fabric
// and the miss responder together, in the order that costs no packet, and
// owns their lifetimes.
//
// Start-up is a list of phases (run, in agent.go; each a method in
// startup.go), and their order matters:
//
//   - chooseUnderlay, connectEtcd, readNetworkConfig: the interface, etcd
//     and the network config, each waited for while it is not there;
//   - installForwardRules: as soon as the network is known, since on a
//     FORWARD-DROP host nothing crosses the overlay without them;
//   - syncLeaseTable: the whole lease table, before anything is published:
//     everything after publishing must take milliseconds, not the length of
//     a list;
//   - ensureDevice: with the VTEP MAC this host published before if it has
//     to be created, so peers' entries stay right;
//   - subscribeToMisses: before the overlay route exists, so no miss can
//     arrive unheard;
//   - acquireLease: the lease is taken (published) with the device's MAC;
//     the address and route go on before, when the subnet is known in
//     advance, else at once after, so that peers answered on publication
//     find the host ready;
//   - reconcileEntries: the device's existing entries against the table:
//     right ones kept, wrong ones fixed or deleted, and addresses the kernel
//     asked about while no vtepd listened answered;
//   - answerMisses, then writeSubnetFile last: it is what tells Docker the
//     overlay is ready.
//
// etcd being unreachable is waited out at every step, never a reason to
// exit: a host whose agent restarts in a loop helps nobody. Stopping
// (context cancelled) leaves the device, its entries and the lease in place,
// so a restart does not disturb traffic.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/etcdclient"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config is everything `vtepd run` is told.
type Config struct {
	Etcd       etcdclient.Config
	EtcdPrefix string
	Underlay   fabric.UnderlaySpec
	// DeviceName overrides flannel.<VNI>, DeviceNameV6 flannel-v6.<VNI>.
	DeviceName   string
	DeviceNameV6 string
	SubnetFile   string
	LeaseTTL     time.Duration
	RenewMargin  time.Duration
	// ReadBuffer is the miss socket's receive buffer in bytes (0: default).
	ReadBuffer int
	// ReportInterval is how often unusual counts (unanswered misses,
	// socket overflows, failed writes) are summarised in the log.
	ReportInterval time.Duration
	// HTTPAddr is where metrics, health and status are served ("": off).
	HTTPAddr string
	// Answer is what an L3 miss installs: one neighbour per address, or a
	// route per peer host.
	Answer miss.AnswerMode
	// IdleTimeout is how long a peer goes without a packet sent to it
	// before the entries pointing at it are removed (0: never).
	IdleTimeout time.Duration
	// NeighbourLimit bounds the PERMANENT neighbour entries (0: the
	// kernel's gc_thresh3, or 1024 where it cannot be read).
	NeighbourLimit int
	// IPMasq masquerades traffic from this host's subnet to outside the
	// overlay (flannel's --ip-masq).
	IPMasq bool
	// ForwardRules accepts overlay traffic in FORWARD (or Docker's
	// DOCKER-USER), for hosts whose FORWARD policy is DROP.
	ForwardRules bool
	// FirewallResync is how often the firewall rules are checked and put
	// back where something removed them (flannel's --iptables-resync);
	// 0 means DefaultFirewallResync.
	FirewallResync time.Duration
	// Version is reported in /status.
	Version string
}

// Run runs the agent until ctx is done. It returns nil after a clean stop,
// and an error if the agent cannot start or cannot go on (its subnet was
// taken by another host, the kernel socket failed).
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	err := run(ctx, cfg, log)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil // stopped while starting up: as clean as any other stop
	}
	return err
}

// run starts the agent phase by phase, in the order the package doc gives,
// then waits until ctx ends or a component fails. Each phase is a method of
// agent (startup.go), named for what it does; /readyz and systemd's STATUS=
// say which one start-up is in.
func run(ctx context.Context, cfg Config, log *zap.Logger) error {
	a, err := newAgent(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()
	for _, p := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"connecting to etcd", a.connectEtcd},
		{"reading the network config", a.readNetworkConfig},
		{"choosing the underlay interface", a.chooseUnderlay},
		{"installing the forward rules", a.installForwardRules},
		{"syncing the lease table from etcd", a.syncLeaseTable},
		{"ensuring the VXLAN devices", a.ensureDevices},
		{"subscribing to misses", a.subscribeToMisses},
		{"acquiring a subnet lease", a.acquireLease},
		{"reconciling the device's entries", a.reconcileEntries},
		{"answering misses", a.answerMisses},
		{"writing the subnet file", a.writeSubnetFile},
	} {
		a.tel.setPhase(p.name)
		t0 := time.Now()
		if err := p.run(a.gctx); err != nil {
			return a.fail(err)
		}
		log.Debug("start-up phase done", zap.String("phase", p.name), zap.Duration("took", time.Since(t0)))
	}
	a.ready()
	return a.wait()
}

// retry calls fn until it succeeds or ctx ends, logging each failure: etcd
// unreachable, or every subnet taken, are conditions to wait out. Each
// attempt gets 15 seconds.
func retry(ctx context.Context, log *zap.Logger, tel *telemetry, what string, fn func(context.Context) error) error {
	wait := time.Second
	tel.setPhase(what)
	for {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		tel.setPhase(fmt.Sprintf("%s: %v", what, err))
		level := zapcore.WarnLevel
		if errors.Is(err, store.ErrNoFreeSubnet) {
			level = zapcore.ErrorLevel // needs an operator: free a subnet or grow the network
		}
		log.Log(level, what+" failed; retrying", zap.Error(err), zap.Duration("backoff", wait))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

// leaseOf finds the lease this host published before, by its public IP:
// the IPv4 one, or for an IPv6-only overlay over IPv6, the IPv6 one.
func leaseOf(t *store.Table, u fabric.Underlay) (store.Lease, bool) {
	return t.Find(func(l *store.Lease) bool {
		return u.PublicIP.IsValid() && l.PublicIP == u.PublicIP && (l.VtepMAC.IsUnicast() || l.VtepMACv6.IsUnicast()) ||
			!l.PublicIP.IsValid() && u.PublicIPv6.IsValid() && l.PublicIPv6 == u.PublicIPv6 && l.VtepMACv6.IsUnicast()
	})
}

// expectedLease is the lease this host will most likely hold: the one it
// held before, or else the subnets its subnet file names if the table does
// not show them held by another host.
func expectedLease(t *store.Table, u fabric.Underlay, c store.Claim) (store.Lease, bool) {
	if l, ok := leaseOf(t, u); ok {
		return l, true
	}
	free := func(p netip.Prefix) bool {
		l, ok := t.LookupIP(p.Addr())
		return !ok || l.PublicIP == c.PublicIP && c.PublicIP.IsValid() || l.PublicIPv6 == c.PublicIPv6 && c.PublicIPv6.IsValid()
	}
	var l store.Lease
	if c.Previous.IsValid() && free(c.Previous) {
		l.Subnet = c.Previous
	}
	if c.PreviousIPv6.IsValid() && free(c.PreviousIPv6) {
		l.IPv6Subnet = c.PreviousIPv6
	}
	return l, l.Subnet.IsValid() || l.IPv6Subnet.IsValid()
}

// changeRouter hands the table's changes to a function set once the
// responder exists. Changes before then are not lost: the responder's
// reconciliation, which comes after, reads the whole table.
type changeRouter struct {
	fn atomic.Pointer[func(store.Change)]
}

func (r *changeRouter) set(fn func(store.Change)) { r.fn.Store(&fn) }

func (r *changeRouter) apply(c store.Change) {
	if fn := r.fn.Load(); fn != nil {
		(*fn)(c)
	}
}

// lockDevice makes sure one agent at a time drives a device. It binds an
// abstract unix socket: those live in the network namespace, like the
// device, and vanish with the process however it dies, so there is no stale
// lock file after a kill -9.
func lockDevice(dev string) (net.Listener, error) {
	l, err := net.Listen("unix", "@vtepd/"+dev)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("agent: another vtepd already runs for device %s in this network namespace", dev)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: lock device %s: %w", dev, err)
	}
	return l, nil
}
