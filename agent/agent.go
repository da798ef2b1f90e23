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
//  4. the address and route go on, and the subnet file is written last: it
//     is what tells Docker the overlay is ready.
//
// Stopping (context cancelled) leaves the device, its entries and the lease
// in place, so a restart does not disturb traffic.
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
)

// Config is everything `vtepd run` is told.
type Config struct {
	EtcdEndpoints []string
	EtcdPrefix    string
	Underlay      fabric.UnderlaySpec
	// DeviceName overrides flannel.<VNI>.
	DeviceName  string
	SubnetFile  string
	LeaseTTL    time.Duration
	RenewMargin time.Duration
}

// Run runs the agent until ctx is done. It returns nil after a clean stop,
// and an error if the agent cannot start or cannot go on (its subnet was
// taken by another host, the kernel socket failed).
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
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

	etcd, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.EtcdEndpoints,
		DialTimeout: 5 * time.Second,
		// The client's own logs are about connections; ours say what they
		// mean for the overlay. Keep its warnings, drop its chatter.
		Logger:               log.Named("etcd").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel)),
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("agent: etcd client for %v: %w", cfg.EtcdEndpoints, err)
	}
	defer etcd.Close()

	netCfg, err := store.WaitConfig(ctx, etcd, cfg.EtcdPrefix, log)
	if err != nil {
		return err
	}
	devName := cfg.DeviceName
	if devName == "" {
		devName = "flannel." + strconv.Itoa(netCfg.Backend.VNI)
	}
	lock, err := lockDevice(devName)
	if err != nil {
		return err
	}
	defer lock.Close()

	prev, err := previousLease(ctx, etcd, cfg.EtcdPrefix, underlay.PublicIP)
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

	claim := store.Claim{PublicIP: underlay.PublicIP, VtepMAC: store.MAC(dev.MAC), TTL: cfg.LeaseTTL}
	if env, err := subnetfile.Read(cfg.SubnetFile); err == nil && env.Network == netCfg.Network {
		claim.Previous = env.Subnet.Masked()
	}
	own, err := store.AcquireLease(ctx, etcd, cfg.EtcdPrefix, netCfg, claim, log)
	if err != nil {
		return err
	}
	ownLease := own.Lease()

	// Subscribe before the route exists: from then on every miss is heard.
	listener, err := miss.Listen(0)
	if err != nil {
		return err
	}
	defer listener.Close()

	table := store.NewTable(netCfg)
	table.SetOwn(ownLease.Key)
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

	select {
	case <-table.Synced():
	case <-gctx.Done():
		return waitErr(ctx, g)
	}

	entries, err := fabric.OpenEntries(dev.Index, dev.Name)
	if err != nil {
		return fail(err)
	}
	defer entries.Close()
	responder := miss.NewResponder(miss.ResponderConfig{
		Ifindex: dev.Index, Network: netCfg.Network, Own: ownLease.Subnet,
	}, table, entries, log)
	g.Go(func() error { return listener.Run(gctx, responder.Handle) })

	if err := dev.SetAddress(ownLease.Gateway()); err != nil {
		return fail(err)
	}
	if err := dev.SetRoutes(ownLease.Gateway(), []netip.Prefix{netCfg.Network}); err != nil {
		return fail(err)
	}
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
	log.Info("vtepd ready", zap.String("device", dev.Name), zap.Stringer("subnet", ownLease.Subnet),
		zap.Stringer("vtep_mac", ownLease.VtepMAC), zap.Int("leases", table.Len()), zap.String("subnet_file", cfg.SubnetFile))

	return waitErr(ctx, g)
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
