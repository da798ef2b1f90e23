// Package agent runs one vtepd: it wires the lease store, the VXLAN fabric
// and the miss responder together, in the order that costs no packet, and
// owns their lifetimes.
//
// Start-up order matters:
//  1. the network config and this host's previous lease are read first, so
//     a device that has to be created gets the VTEP MAC peers already know;
//  2. the device is ensured, then the lease taken with the device's MAC;
//  3. the miss subscription is opened and the lease table synced before the
//     overlay route exists, so no miss can arrive unheard or unanswerable;
//  4. the device's existing entries are reconciled with the table: right
//     ones kept, wrong ones fixed or deleted, and addresses the kernel asked
//     about while no vtepd listened answered;
//  5. the address and route go on, and the subnet file is written last: it
//     is what tells Docker the overlay is ready.
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
	"strconv"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/subnetfile"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// EtcdConfig says how to reach etcd.
type EtcdConfig struct {
	Endpoints []string
}

// Config is everything `vtepd run` is told.
type Config struct {
	Etcd       EtcdConfig
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

	tel.setPhase("choosing the underlay interface")
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("agent: open rtnetlink: %w", err)
	}
	defer h.Close()

	underlay, err := fabric.FindUnderlay(h, cfg.Underlay)
	if err != nil {
		return err
	}
	log.Info("underlay chosen", zap.String("iface", underlay.Name), zap.Stringer("local", underlay.Addr),
		zap.Stringer("public_ip", underlay.PublicIP), zap.Int("mtu", underlay.MTU))

	etcd, err := NewEtcdClient(cfg.Etcd, log)
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

	var prev store.Lease
	err = retry(ctx, log, tel, "looking for this host's previous lease", func(ctx context.Context) (err error) {
		prev, err = previousLease(ctx, etcd, cfg.EtcdPrefix, underlay.PublicIP)
		return err
	})
	if err != nil {
		return err
	}
	var prevMAC net.HardwareAddr
	if prev.VtepMAC.IsUnicast() {
		prevMAC = prev.VtepMAC.HardwareAddr()
	}
	dev, err := fabric.EnsureDevice(h, fabric.DeviceSpec{
		Name: devName, VNI: netCfg.Backend.VNI, Port: netCfg.Backend.Port, Underlay: underlay, MAC: prevMAC,
	}, log)
	if err != nil {
		return err
	}
	if err := dev.EnableAppProbes(); err != nil {
		return err
	}
	if trap, err := dev.ProbeTimersTrap(); err == nil && trap != "" {
		log.Warn("neighbour timers keep idle entries alive", zap.String("why", trap))
	}
	if err := tel.openInspector(dev); err != nil {
		return err
	}
	tel.attach(func(t *telemetry) { t.dev = dev })

	claim := store.Claim{PublicIP: underlay.PublicIP, VtepMAC: store.MAC(dev.MAC), TTL: cfg.LeaseTTL}
	if env, err := subnetfile.Read(cfg.SubnetFile); err == nil && env.Network == netCfg.Network {
		claim.Previous = env.Subnet.Masked()
	}
	var own *store.OwnLease
	err = retry(ctx, log, tel, "acquiring a subnet lease", func(ctx context.Context) (err error) {
		own, err = store.AcquireLease(ctx, etcd, cfg.EtcdPrefix, netCfg, claim, log)
		return err
	})
	if err != nil {
		return err
	}
	ownLease := own.Lease()
	tel.attach(func(t *telemetry) { t.own = own })

	// Subscribe before the route exists: from then on every miss is heard.
	listener, err := miss.Listen(cfg.ReadBuffer)
	if err != nil {
		return err
	}
	defer listener.Close()
	entries, err := fabric.OpenEntries(dev.Index, dev.Name)
	if err != nil {
		return err
	}
	defer entries.Close()

	table := store.NewTable(netCfg)
	table.SetOwn(ownLease.Key)
	responder := miss.NewResponder(miss.ResponderConfig{
		Ifindex: dev.Index, Network: netCfg.Network, Own: ownLease.Subnet, Observe: tel.observe,
	}, table, entries, log)
	tel.attach(func(t *telemetry) {
		t.table, t.listener, t.responder, t.entries = table, listener, responder, entries
	})
	table.OnChange(responder.Invalidate)
	table.OnChange(func(c store.Change) {
		// Our key deleted, or saying something we did not write: let the
		// keeper find out whether to publish again or give up the subnet.
		if c.Old != nil && c.Old.Key == ownLease.Key && c.New == nil ||
			c.New != nil && c.New.Key == ownLease.Key && !c.New.SameTarget(own.Lease()) {
			own.Recheck()
		}
	})

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	// fail stops what was started before returning a start-up error.
	fail := func(err error) error {
		cancel()
		g.Wait()
		return err
	}
	g.Go(func() error { return table.Sync(gctx, etcd, cfg.EtcdPrefix, log) })
	g.Go(func() error { return own.Keep(gctx, cfg.RenewMargin) })

	tel.setPhase("syncing the lease table from etcd")
	select {
	case <-table.Synced():
	case <-gctx.Done():
		return waitErr(ctx, g)
	}
	tel.setPhase("reconciling the device's entries")
	rec, err := responder.Reconcile()
	if err != nil {
		log.Warn("reconciling the device's entries with the lease table was incomplete", zap.Error(err))
	}
	log.Info("device entries reconciled", zap.Int("kept", rec.Kept), zap.Int("fixed", rec.Fixed),
		zap.Int("removed", rec.Removed), zap.Int("answered", rec.Answered))
	// After a socket overflow the lost misses are recovered from the
	// neighbour table at once, on a goroutine of their own so that the
	// listener keeps draining the socket meanwhile.
	sweep := make(chan struct{}, 1)
	overflowed := func() {
		select {
		case sweep <- struct{}{}:
		default: // a sweep is pending already: it will see these too
		}
	}
	g.Go(func() error {
		sweepAfterOverflow(gctx, sweep, responder, tel, log)
		return nil
	})
	g.Go(func() error { return listener.Run(gctx, responder.Handle, overflowed) })
	g.Go(func() error {
		report(gctx, cfg.ReportInterval, log, responder, listener, table)
		return nil
	})

	tel.setPhase("setting the device's address and route")
	routes := func() []netip.Prefix { return []netip.Prefix{netCfg.Network} }
	if _, err := dev.SetAddress(ownLease.Gateway()); err != nil {
		return fail(err)
	}
	if _, err := dev.SetRoutes(ownLease.Gateway(), routes()); err != nil {
		return fail(err)
	}
	tel.attach(func(t *telemetry) { t.gateway, t.routes = ownLease.Gateway(), routes })
	g.Go(func() error {
		keepDevice(gctx, dev, ownLease.Gateway(), routes, log)
		return nil
	})
	if fwd, err := fabric.IPForwarding(); err == nil && !fwd {
		log.Warn("IPv4 forwarding is off in this namespace: containers behind this host are unreachable through the overlay (sysctl net.ipv4.ip_forward=1)")
	}
	env := subnetfile.Env{
		Network: netCfg.Network,
		Subnet:  subnetfile.BridgeSubnet(ownLease.Subnet),
		MTU:     dev.MTU,
	}
	if err := subnetfile.Write(cfg.SubnetFile, env); err != nil {
		return fail(err)
	}
	tel.setPhase("")
	log.Info("vtepd ready", zap.String("device", dev.Name), zap.Stringer("subnet", ownLease.Subnet),
		zap.Stringer("vtep_mac", ownLease.VtepMAC), zap.Int("leases", table.Len()), zap.String("subnet_file", cfg.SubnetFile))

	return waitErr(ctx, g)
}

// sweepAfterOverflow answers, each time the miss socket overflowed, the
// addresses the kernel is still waiting on. The kernel reports an overflow
// once per episode of congestion (netlink_overrun), and a storm may still be
// creating entries when the report comes, so sweeps repeat, 50 ms apart,
// until one finds nothing left to answer.
func sweepAfterOverflow(ctx context.Context, signal <-chan struct{}, r *miss.Responder, tel *telemetry, log *zap.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-signal:
		}
		start := time.Now()
		total, sweeps := 0, 0
		for ctx.Err() == nil {
			n, err := r.Sweep()
			sweeps++
			total += n
			tel.sweeps.Add(1)
			tel.swept.Add(uint64(n))
			if err != nil {
				log.Warn("answering misses lost to a socket overflow failed in part", zap.Int("answered", n), zap.Error(err))
			}
			if n == 0 {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		log.Info("miss socket overflowed; answered the addresses still pending",
			zap.Int("answered", total), zap.Int("sweeps", sweeps), zap.Duration("took", time.Since(start)))
	}
}

// NewEtcdClient returns a client that reconnects on its own. gRPC's default
// reconnect backoff grows to two minutes; capped at five seconds, an etcd
// member that comes back is used again within seconds.
func NewEtcdClient(cfg EtcdConfig, log *zap.Logger) (*clientv3.Client, error) {
	bo := backoff.DefaultConfig
	bo.MaxDelay = 5 * time.Second
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: 5 * time.Second,
		// The client's own logs are about connections; ours say what they
		// mean for the overlay. Keep its warnings, drop its chatter.
		Logger:               log.Named("etcd").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel)),
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		DialOptions:          []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 5 * time.Second})},
	})
	if err != nil {
		return nil, fmt.Errorf("agent: etcd client for %v: %w", cfg.Endpoints, err)
	}
	return c, nil
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

// previousLease finds the lease this host published before, by public IP.
func previousLease(ctx context.Context, c *clientv3.Client, prefix string, publicIP netip.Addr) (store.Lease, error) {
	resp, err := c.Get(ctx, store.SubnetsPrefix(prefix), clientv3.WithPrefix())
	if err != nil {
		return store.Lease{}, fmt.Errorf("agent: list leases: %w", err)
	}
	for _, kv := range resp.Kvs {
		l, err := store.ParseLease(string(kv.Key[len(store.SubnetsPrefix(prefix)):]), kv.Value)
		if err == nil && l.PublicIP == publicIP {
			return l, nil
		}
	}
	return store.Lease{}, nil
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
