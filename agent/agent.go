// Package agent runs one vtepd: it wires the lease store, the VXLAN fabric
// and the miss responder together, in the order that costs no packet, and
// owns their lifetimes.
//
// Start-up order matters:
//  1. the network config, then the whole lease table: everything after the
//     lease is published must take milliseconds, not the length of a list;
//  2. the device is ensured, with the VTEP MAC this host published before if
//     it has to be created, so peers' entries stay right;
//  3. the miss subscription is opened before the overlay route exists, so
//     no miss can arrive unheard;
//  4. the lease is taken (published) with the device's MAC; the address and
//     route go on before, when the subnet is known in advance, else at once
//     after, so that peers answered on publication find the host ready;
//  5. the device's existing entries are reconciled with the table: right
//     ones kept, wrong ones fixed or deleted, and addresses the kernel asked
//     about while no vtepd listened answered, then misses are answered;
//  6. the subnet file is written last: it is what tells Docker the overlay
//     is ready.
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
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/etcdclient"

	"github.com/vishvananda/netlink"
	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/subnetfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Config is everything `vtepd run` is told.
type Config struct {
	Etcd       etcdclient.Config
	EtcdPrefix string
	Underlay   fabric.UnderlaySpec
	// DeviceName overrides flannel.<VNI>.
	DeviceName  string
	SubnetFile  string
	LeaseTTL    time.Duration
	RenewMargin time.Duration
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
	// IPMasq masquerades traffic from this host's subnet to outside the
	// overlay (flannel's --ip-masq).
	IPMasq bool
	// ForwardRules accepts overlay traffic in FORWARD (or Docker's
	// DOCKER-USER), for hosts whose FORWARD policy is DROP.
	ForwardRules bool
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

func run(ctx context.Context, cfg Config, log *zap.Logger) error {
	// Serve health from the first moment: while start-up waits on etcd,
	// /healthz says what it is waiting for.
	tel := newTelemetry(cfg.Version)
	defer tel.close()
	sd := &systemd{log: log}
	tel.onPhase = func(phase string) { sd.notify("STATUS=" + phase) }
	stopping := context.AfterFunc(ctx, func() { sd.notify("STOPPING=1\nSTATUS=stopping; device, entries and lease stay") })
	defer stopping()
	httpListener, err := listenHTTP(cfg.HTTPAddr)
	if err != nil {
		return err
	}
	if httpListener != nil {
		hctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := tel.serveHTTP(hctx, httpListener, log); err != nil {
				log.Error("serving metrics and health stopped", zap.Error(err))
			}
		}()
		defer func() { stop(); <-done }()
		log.Info("serving metrics, health and status", zap.String("http_addr", httpListener.Addr().String()))
	}

	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("agent: open rtnetlink: %w", err)
	}
	defer h.Close()

	// An interface named by --iface may not be there yet (a NIC that comes
	// up late, a bond being built): wait for it, saying what was tried,
	// rather than exit into a restart loop.
	var underlay fabric.Underlay
	err = retry(ctx, log, tel, "choosing the underlay interface", func(context.Context) (err error) {
		underlay, err = fabric.FindUnderlay(h, cfg.Underlay)
		return err
	})
	if err != nil {
		return err
	}
	log.Info("underlay chosen", zap.String("iface", underlay.Name), zap.Stringer("local", underlay.Addr),
		zap.Stringer("public_ip", underlay.PublicIP), zap.Int("mtu", underlay.MTU))

	// With a username, making the client is a login, which needs etcd:
	// an etcd that is away at start is waited for, not a reason to exit.
	tel.setPhase("connecting to etcd")
	etcd, err := etcdclient.Dial(ctx, cfg.Etcd, log)
	if err != nil {
		return err
	}
	defer etcd.Close()

	tel.setPhase("reading the network config")
	netCfg, err := store.WaitConfig(ctx, etcd, cfg.EtcdPrefix, log, tel.setPhase)
	if err != nil {
		return err
	}
	tel.attach(func(t *telemetry) { t.netCfg = &netCfg })
	devName := cfg.DeviceName
	if devName == "" {
		devName = "flannel." + strconv.Itoa(netCfg.Backend.VNI)
	}
	lock, err := lockDevice(devName)
	if err != nil {
		return err
	}
	defer lock.Close()

	// The forward rules go in as soon as the network is known: on a host
	// whose FORWARD policy is DROP nothing crosses the overlay without them.
	fw := startFilters(cfg, netCfg.Network, log)
	tel.attach(func(t *telemetry) { t.filters = fw })
	defer func() {
		// Rules go with a clean stop, and stay for a handover or after an
		// error: systemd restarts a failed vtepd, which finds them there.
		fw.stop(ctx.Err() != nil && !errors.Is(context.Cause(ctx), ErrHandover))
	}()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	// fail stops what was started before returning a start-up error.
	fail := func(err error) error {
		cancel()
		g.Wait()
		return err
	}

	// The lease table comes first, however big: once this host's lease is
	// published, peers may send to it, and everything after publishing
	// must take milliseconds, not the length of a list.
	table := store.NewTable(netCfg)
	var changes changeRouter
	table.OnChange(changes.apply)
	g.Go(func() error { return table.Sync(gctx, etcd, cfg.EtcdPrefix, log) })
	tel.attach(func(t *telemetry) { t.table = table })
	tel.setPhase("syncing the lease table from etcd")
	select {
	case <-table.Synced():
	case <-gctx.Done():
		return waitErr(ctx, g)
	}

	// A device that has to be created gets the VTEP MAC this host
	// published before, so that peers' entries stay right.
	var prevMAC net.HardwareAddr
	if prev, ok := leaseOf(table, underlay.PublicIP); ok {
		prevMAC = prev.VtepMAC.HardwareAddr()
	}
	tel.setPhase("ensuring the VXLAN device")
	dev, err := fabric.EnsureDevice(h, fabric.DeviceSpec{
		Name: devName, VNI: netCfg.Backend.VNI, Port: netCfg.Backend.Port, Underlay: underlay, MAC: prevMAC,
	}, log)
	if err != nil {
		return fail(err)
	}
	if err := dev.EnableAppProbes(); err != nil {
		return fail(err)
	}
	if trap, err := dev.ProbeTimersTrap(); err == nil && trap != "" {
		log.Warn("neighbour timers keep idle entries alive", zap.String("why", trap))
	}
	if err := tel.openInspector(dev); err != nil {
		return fail(err)
	}
	tel.attach(func(t *telemetry) { t.dev = dev })

	// Subscribe before the route exists: from then on every miss is heard.
	listener, err := miss.Listen(cfg.ReadBuffer)
	if err != nil {
		return fail(err)
	}
	defer listener.Close()
	entries, err := fabric.OpenEntries(dev.Index, dev.Name)
	if err != nil {
		return fail(err)
	}
	defer entries.Close()

	claim := store.Claim{PublicIP: underlay.PublicIP, VtepMAC: store.MAC(dev.MAC), TTL: cfg.LeaseTTL}
	if env, err := subnetfile.Read(cfg.SubnetFile); err == nil && env.Network == netCfg.Network {
		claim.Previous = env.Subnet.Masked()
	}
	// Once the lease is published, peers may send at once (and do: a
	// peer's sweep answers whoever waited for this host). When the subnet
	// is known in advance, the device gets its address and the overlay
	// route before the lease is published; the miss socket is subscribed
	// already, so nothing goes unheard, and an acquisition that ends on
	// another subnet corrects the address right after.
	overlay := []fabric.Route{{Dst: netCfg.Network}}
	if expected, ok := expectedSubnet(table, underlay.PublicIP, claim.Previous); ok {
		if _, err := dev.SetAddress(expected.Addr()); err != nil {
			return fail(err)
		}
		if _, err := dev.EnsureRoutes(expected.Addr(), overlay); err != nil {
			return fail(err)
		}
	}
	var own *store.OwnLease
	err = retry(gctx, log, tel, "acquiring a subnet lease", func(ctx context.Context) (err error) {
		own, err = store.AcquireLease(ctx, etcd, cfg.EtcdPrefix, netCfg, claim, log)
		return err
	})
	if err != nil {
		return fail(err)
	}
	ownLease := own.Lease()
	table.SetOwn(ownLease.Key)
	tel.attach(func(t *telemetry) { t.own = own })
	if _, err := dev.SetAddress(ownLease.Gateway()); err != nil {
		return fail(err)
	}
	if _, err := dev.EnsureRoutes(ownLease.Gateway(), overlay); err != nil {
		return fail(err)
	}
	fw.masquerade(ownLease.Subnet)
	g.Go(func() error {
		fw.keep(gctx)
		return nil
	})

	sweeper := newSweeper()
	responder := miss.NewResponder(miss.ResponderConfig{
		Ifindex: dev.Index, Network: netCfg.Network, Own: ownLease.Subnet, Gateway: ownLease.Gateway(),
		Mode: cfg.Answer, Observe: tel.observe, Sweep: sweeper.newLease,
	}, table, entries, log)
	tel.attach(func(t *telemetry) {
		t.listener, t.responder, t.entries, t.sweeper = listener, responder, entries, sweeper
	})
	changes.set(func(c store.Change) {
		responder.ApplyChange(c)
		// Our key deleted, or saying something we did not write: let the
		// keeper find out whether to publish again or give up the subnet.
		if c.Old != nil && c.Old.Key == ownLease.Key && c.New == nil ||
			c.New != nil && c.New.Key == ownLease.Key && !c.New.SameTarget(own.Lease()) {
			own.Recheck()
		}
	})
	g.Go(func() error { return own.Keep(gctx, cfg.RenewMargin) })

	tel.setPhase("reconciling the device's entries")
	rec, err := responder.Reconcile()
	if err != nil {
		log.Warn("reconciling the device's entries with the lease table was incomplete", zap.Error(err))
	}
	log.Info("device entries reconciled", zap.Int("kept", rec.Kept), zap.Int("fixed", rec.Fixed),
		zap.Int("removed", rec.Removed), zap.Int("answered", rec.Answered))
	g.Go(func() error {
		sweeper.run(gctx, responder, log)
		return nil
	})
	g.Go(func() error { return listener.Run(gctx, responder.Handle, sweeper.overflowed) })
	g.Go(func() error { return sd.watchdog(gctx, listener.Turns) })
	g.Go(func() error {
		report(gctx, cfg.ReportInterval, log, responder, listener, table)
		return nil
	})

	tel.attach(func(t *telemetry) { t.gateway, t.routes = ownLease.Gateway(), []netip.Prefix{netCfg.Network} })
	g.Go(func() error {
		keepDevice(gctx, dev, ownLease.Gateway(), overlay, responder, log)
		return nil
	})
	if fwd, err := fabric.IPForwarding(); err == nil && !fwd {
		log.Warn("IPv4 forwarding is off in this namespace: containers behind this host are unreachable through the overlay (sysctl net.ipv4.ip_forward=1)")
	}
	env := subnetfile.Env{
		Network: netCfg.Network,
		Subnet:  subnetfile.BridgeSubnet(ownLease.Subnet),
		MTU:     dev.MTU,
		IPMasq:  cfg.IPMasq,
	}
	if err := subnetfile.Write(cfg.SubnetFile, env); err != nil {
		return fail(err)
	}
	tel.setPhase("")
	log.Info("vtepd ready", zap.String("device", dev.Name), zap.Stringer("subnet", ownLease.Subnet), zap.Stringer("answer", cfg.Answer),
		zap.Stringer("vtep_mac", ownLease.VtepMAC), zap.Int("leases", table.Len()), zap.String("subnet_file", cfg.SubnetFile))
	sd.notify(fmt.Sprintf("READY=1\nSTATUS=answering misses for %s on %s, %d leases", ownLease.Subnet, dev.Name, table.Len()))
	// Loading the table left garbage several times its size, which the
	// heap would keep mapped until the collector's scavenger got round to
	// it: hand it back now, once, so a host's memory is the table's and not
	// the start's (50,000 leases: RSS 92 MiB before this, see BENCHMARKS.md).
	debug.FreeOSMemory()

	return waitErr(ctx, g)
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

// waitErr waits for the group and turns a clean stop into nil.
func waitErr(ctx context.Context, g *errgroup.Group) error {
	err := g.Wait()
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

// leaseOf finds the lease this host published before, by public IP.
func leaseOf(t *store.Table, publicIP netip.Addr) (store.Lease, bool) {
	return t.Find(func(l *store.Lease) bool { return l.PublicIP == publicIP && l.VtepMAC.IsUnicast() })
}

// expectedSubnet is the subnet this host will most likely take: the one its
// previous lease holds, or else the one its subnet file names if the table
// does not show it held by another host.
func expectedSubnet(t *store.Table, publicIP netip.Addr, hint netip.Prefix) (netip.Prefix, bool) {
	if l, ok := leaseOf(t, publicIP); ok {
		return l.Subnet, true
	}
	if !hint.IsValid() {
		return netip.Prefix{}, false
	}
	if l, ok := t.LookupIP(hint.Addr()); ok && l.PublicIP != publicIP {
		return netip.Prefix{}, false
	}
	return hint, true
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
