package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"strings"

	"github.com/vtepd/vtepd/etcdclient"
	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/subnetfile"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// agent is one run of vtepd: the components start-up brings up, phase by
// phase (the methods below, in the order run calls them), and what stops
// them.
type agent struct {
	cfg Config
	log *zap.Logger
	ctx context.Context // the caller's: a clean stop
	tel *telemetry
	sd  *systemd

	// g runs the components that run until the agent stops; gctx ends when
	// ctx does or one of them fails.
	g      *errgroup.Group
	gctx   context.Context
	cancel context.CancelFunc
	// cleanups run in reverse order when the agent is done.
	cleanups []func()

	kernel   *fabric.Reader
	underlay fabric.Underlay
	etcd     *clientv3.Client
	netCfg   store.Config
	filters  *filters
	table    *store.Table
	changes  changeRouter
	// families are the overlay's address families, a VXLAN device each:
	// IPv4 (flannel.<VNI>) first, then IPv6 (flannel-v6.<VNI>).
	families []*family
	listener *miss.Listener
	own      *store.OwnLease
	sweeper  *sweeper
	// firewallDone is closed once the firewall rules the subnet file
	// promises are in place: the forward rules, and the ip-masq rules when
	// --ip-masq is on. They are written beside the other phases, not on
	// the path to readiness.
	firewallDone chan struct{}
	// startMasquerade, set by installForwardRules, adds the ip-masq rules
	// for this host's subnet once the forward rules are in, and keeps both
	// in place.
	startMasquerade func(ctx context.Context, subnet netip.Prefix)
}

// newAgent serves health from the first moment (while start-up waits on
// etcd, /readyz says what it is waiting for) and opens the kernel reader
// the underlay choice and the health checks share.
func newAgent(ctx context.Context, cfg Config, log *zap.Logger) (*agent, error) {
	a := &agent{cfg: cfg, log: log, ctx: ctx, tel: newTelemetry(cfg.Version), sd: &systemd{log: log}}
	a.tel.onPhase = func(phase string) { a.sd.notify("STATUS=" + phase) }
	stopping := context.AfterFunc(ctx, func() { a.sd.notify("STOPPING=1\nSTATUS=stopping; device, entries and lease stay") })
	a.onClose(func() { stopping() })

	runCtx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	a.g, a.gctx = errgroup.WithContext(runCtx)
	a.onClose(cancel)

	httpListener, err := listenHTTP(cfg.HTTPAddr)
	if err != nil {
		a.close()
		return nil, err
	}
	if httpListener != nil {
		hctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := a.tel.serveHTTP(hctx, httpListener, log); err != nil {
				log.Error("serving metrics and health stopped", zap.Error(err))
			}
		}()
		a.onClose(func() { stop(); <-done })
		log.Info("serving metrics, health and status", zap.String("http_addr", httpListener.Addr().String()))
	}
	if a.kernel, err = fabric.OpenReader(); err != nil {
		a.close()
		return nil, err
	}
	a.onClose(func() { a.kernel.Close() })
	return a, nil
}

// onClose registers fn to run when the agent is done.
func (a *agent) onClose(fn func()) { a.cleanups = append(a.cleanups, fn) }

func (a *agent) close() {
	for i := len(a.cleanups) - 1; i >= 0; i-- {
		a.cleanups[i]()
	}
	a.cleanups = nil
}

// fail stops what start-up started and returns err; when err only says
// that the agent is stopping (a clean stop, or a component that failed),
// it returns what wait does.
func (a *agent) fail(err error) error {
	if a.gctx.Err() != nil && errors.Is(err, a.gctx.Err()) {
		return a.wait()
	}
	a.cancel()
	a.g.Wait()
	return err
}

// wait waits for the components and turns a clean stop into nil.
func (a *agent) wait() error {
	err := a.g.Wait()
	if a.ctx.Err() != nil && errors.Is(err, a.ctx.Err()) {
		return nil
	}
	return err
}

// chooseUnderlay finds the interface VXLAN packets leave by. One named by
// --iface may not be there yet (a NIC that comes up late, a bond being
// built): it is waited for, saying what was tried, rather than exited on
// into a restart loop.
func (a *agent) chooseUnderlay(ctx context.Context) error {
	spec := a.cfg.Underlay
	switch {
	case a.netCfg.EnableIPv4 && a.netCfg.EnableIPv6:
		spec.Stack = fabric.DualStack
	case a.netCfg.EnableIPv6:
		spec.Stack = fabric.IPv6Stack
	}
	err := retry(ctx, a.log, a.tel, "choosing the underlay interface", func(context.Context) (err error) {
		a.underlay, err = a.kernel.FindUnderlay(spec)
		return err
	})
	if err != nil {
		return err
	}
	u := a.underlay
	a.log.Info("underlay chosen", zap.String("iface", u.Name), zap.Stringer("local", u.Addr), zap.Stringer("public_ip", u.PublicIP),
		zap.Stringer("local_ipv6", u.Addr6), zap.Stringer("public_ipv6", u.PublicIPv6), zap.Int("mtu", u.MTU))
	return nil
}

// connectEtcd makes the etcd client. With a username, making it is a login,
// which needs etcd: an etcd that is away at start is waited for.
func (a *agent) connectEtcd(ctx context.Context) error {
	c, err := etcdclient.Dial(ctx, a.cfg.Etcd, a.log)
	if err != nil {
		return err
	}
	a.etcd = c
	a.onClose(func() { c.Close() })
	return nil
}

// readNetworkConfig waits for a valid network config, then takes the lock
// on the device it names: one agent at a time drives a device.
func (a *agent) readNetworkConfig(ctx context.Context) error {
	cfg, err := store.WaitConfig(ctx, a.etcd, a.cfg.EtcdPrefix, a.log, a.tel.setPhase)
	if err != nil {
		return err
	}
	a.netCfg = cfg
	for _, w := range cfg.Warnings {
		a.log.Warn("network config: accepted, but ignored", zap.String("key", store.ConfigKey(a.cfg.EtcdPrefix)), zap.String("what", w))
	}
	a.tel.setNetwork(cfg.Network, cfg.IPv6Network)
	a.g.Go(func() error {
		store.FollowConfig(ctx, a.etcd, a.cfg.EtcdPrefix, cfg, a.configChanged)
		return nil
	})
	for _, ipv6 := range a.familiesOn() {
		lock, err := lockDevice(a.deviceName(ipv6))
		if err != nil {
			return err
		}
		a.onClose(func() { lock.Close() })
	}
	return nil
}

// familiesOn lists the overlay's families, IPv4 (false) first.
func (a *agent) familiesOn() []bool {
	var out []bool
	if a.netCfg.EnableIPv4 {
		out = append(out, false)
	}
	if a.netCfg.EnableIPv6 {
		out = append(out, true)
	}
	return out
}

// configChanged says what a change of the network config in etcd means for
// this vtepd: it runs on with the config it started with, and says whether
// a restart would apply the new one.
func (a *agent) configChanged(ch store.ConfigChange) {
	var note string
	switch {
	case ch.Err != nil:
		a.log.Error("network config in etcd is no longer valid; running on with the config in use", zap.String("key", ch.Key), zap.Error(ch.Err))
		note = fmt.Sprintf("network config %s in etcd is not valid (%v): running with the config read at start", ch.Key, ch.Err)
	case len(ch.Differences) == 0:
		a.log.Info("network config in etcd is the running one again", zap.String("key", ch.Key))
	case ch.NeedsRestart:
		a.log.Warn("network config in etcd changed; running on with the config in use: restart vtepd to apply it",
			zap.String("key", ch.Key), zap.Strings("differences", ch.Differences))
		note = fmt.Sprintf("network config %s in etcd differs from the running one (%s): restart vtepd to apply it", ch.Key, strings.Join(ch.Differences, "; "))
	default:
		a.log.Info("network config in etcd changed; it bounds subnets acquired from now on, and this host keeps its own",
			zap.String("key", ch.Key), zap.Strings("differences", ch.Differences))
	}
	a.tel.setConfigNote(note)
}

// deviceName names the device of a family: flannel's flannel.<VNI> and
// flannel-v6.<VNI>, or --device and --device-v6.
func (a *agent) deviceName(ipv6 bool) string {
	switch {
	case ipv6 && a.cfg.DeviceNameV6 != "":
		return a.cfg.DeviceNameV6
	case !ipv6 && a.cfg.DeviceName != "":
		return a.cfg.DeviceName
	}
	return fabric.DeviceName(a.netCfg.Backend.VNI, ipv6)
}

// installForwardRules starts putting the forward rules in as soon as the
// network is known: on a host whose FORWARD policy is DROP nothing crosses
// the overlay without them. Writing them runs programs (iptables) and takes
// longer than the phases up to the lease together, so it runs beside them;
// the ip-masq rules follow once the subnet is known (acquireLease), and the
// subnet file, which tells Docker the host is ready, waits for both.
func (a *agent) installForwardRules(context.Context) error {
	forwardDone := make(chan struct{})
	a.firewallDone = make(chan struct{})
	a.onClose(func() {
		<-forwardDone
		// Rules go with a clean stop, and stay for a handover or after an
		// error: systemd restarts a failed vtepd, which finds them there.
		// The components have stopped by now: nothing re-asserts them.
		a.filters.stop(a.ctx.Err() != nil && !errors.Is(context.Cause(a.ctx), ErrHandover))
	})
	if a.netCfg.EnableIPv6 {
		// package firewall writes IPv4 rules alone: say so, rather than
		// fail on an IPv6-only overlay's missing IPv4 network.
		a.log.Warn("forward and ip-masq rules cover the IPv4 overlay only: a host whose IPv6 FORWARD policy drops must accept the IPv6 overlay itself",
			zap.Stringer("ipv6_network", a.netCfg.IPv6Network), zap.Bool("ipv4", a.netCfg.EnableIPv4))
	}
	go func() {
		defer close(forwardDone)
		a.filters = startFilters(a.cfg, a.deviceName(!a.netCfg.EnableIPv4), a.netCfg.Network, a.log)
		a.tel.setFilters(a.filters)
	}()
	a.startMasquerade = func(ctx context.Context, subnet netip.Prefix) {
		a.g.Go(func() error {
			select {
			case <-forwardDone:
			case <-ctx.Done():
				close(a.firewallDone)
				return nil
			}
			if !a.cfg.IPMasq {
				// What is left to do removes an earlier vtepd's
				// ip-masq rules: nothing the subnet file promises.
				close(a.firewallDone)
				a.filters.masquerade(subnet)
			} else {
				a.filters.masquerade(subnet)
				close(a.firewallDone)
			}
			a.filters.reassert(ctx)
			return nil
		})
	}
	return nil
}

// syncLeaseTable loads the whole lease table, however big, before anything
// is published: once this host's lease is, peers may send to it, and
// everything after publishing must take milliseconds, not the length of a
// list.
func (a *agent) syncLeaseTable(ctx context.Context) error {
	a.table = store.NewTable(a.netCfg)
	a.table.OnChange(a.changes.apply)
	a.g.Go(func() error { return a.table.Sync(ctx, a.etcd, a.cfg.EtcdPrefix, a.log) })
	a.tel.setTable(a.table)
	select {
	case <-a.table.Synced():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ensureDevices creates or adopts a VXLAN device for each of the overlay's
// families. One that has to be created gets the VTEP MAC this host
// published before, so that peers' entries stay right.
func (a *agent) ensureDevices(context.Context) error {
	prev, hadPrev := leaseOf(a.table, a.underlay)
	for _, ipv6 := range a.familiesOn() {
		f := &family{ipv6: ipv6, network: a.netCfg.Network, local: a.underlay.Addr}
		var prevMAC store.MAC
		if ipv6 {
			f.network, f.local, prevMAC = a.netCfg.IPv6Network, a.underlay.Addr6, prev.VtepMACv6
			if !f.local.IsValid() || f.local.IsLinkLocalUnicast() {
				// An IPv6-only overlay over an IPv4 underlay: there is no
				// IPv4 device, so the IPv6 one may take the IPv4 address
				// (FindUnderlay refuses a dual stack without IPv6).
				f.local = a.underlay.Addr
			}
		} else {
			prevMAC = prev.VtepMAC
		}
		spec := fabric.DeviceSpec{
			Name: a.deviceName(ipv6), VNI: a.netCfg.Backend.VNI, Port: a.netCfg.Backend.Port, Underlay: a.underlay,
			IPv6: ipv6, Local: f.local, MTU: a.netCfg.Backend.MTU, GBP: a.netCfg.Backend.GBP, Learning: a.netCfg.Backend.Learning,
		}
		if hadPrev && prevMAC.IsUnicast() {
			spec.MAC = prevMAC.HardwareAddr()
		}
		dev, err := fabric.EnsureDevice(spec, a.log)
		if err != nil {
			return err
		}
		f.dev = dev
		a.onClose(func() { dev.Close() })
		if err := dev.EnableAppProbes(); err != nil {
			return err
		}
		if f.direct(a.netCfg, a.underlay) != nil {
			if err := dev.LooseReversePath(); err != nil {
				return err
			}
			// Not vtepd's to loosen: a peer sends directly once it has
			// its route, and until this host has one back (it has not
			// sent to that peer since its routes went: a reboot, say) a
			// strict filter drops what comes in on the underlay.
			if rp, err := fabric.ReversePathFilter(a.underlay.Name); err == nil && rp == 1 && !f.ipv6 {
				a.log.Warn("DirectRouting with strict reverse-path filtering on the underlay interface: a peer's direct packets are dropped until this host has sent to that peer; set it to 2 (loose)",
					zap.String("sysctl", "net.ipv4.conf."+a.underlay.Name+".rp_filter"), zap.Int("rp_filter", rp))
			}
		}
		if trap, err := dev.ProbeTimersTrap(); err == nil && trap != "" {
			a.log.Warn("neighbour timers keep idle entries alive", zap.String("why", trap))
		}
		f.tel = a.tel.addFamily(f.name(), deviceState{name: dev.Name, index: dev.Index, mac: dev.MAC.String(), mtu: dev.MTU})
		a.families = append(a.families, f)
	}
	a.tel.setKernel(a.kernel)
	return nil
}

// subscribeToMisses opens the miss socket before the overlay routes exist:
// from then on every miss is heard. The writers the answers go through, one
// per device, are opened with it.
func (a *agent) subscribeToMisses(context.Context) error {
	l, err := miss.Listen(a.cfg.ReadBuffer)
	if err != nil {
		return err
	}
	a.listener = l
	a.onClose(func() { l.Close() })
	for _, f := range a.families {
		opts := []fabric.EntriesOption{fabric.WithIPv6(f.ipv6)}
		if f.direct(a.netCfg, a.underlay) != nil {
			opts = append(opts, fabric.WithDirectRoutes(a.underlay.Index, f.network))
		}
		e, err := fabric.OpenEntries(f.dev.Index, f.dev.Name, opts...)
		if err != nil {
			return err
		}
		f.entries = e
		a.onClose(func() { e.Close() })
	}
	return nil
}

// acquireLease takes this host's subnets and gives each device its address
// and overlay route. Once the lease is published, peers may send at once
// (and do: a peer's sweep answers whoever waited for this host). When the
// subnets are known in advance, the devices get their addresses and routes
// before the lease is published; the miss socket is subscribed already, so
// nothing goes unheard, and an acquisition that ends on other subnets
// corrects the addresses right after.
func (a *agent) acquireLease(ctx context.Context) error {
	claim := store.Claim{TTL: a.cfg.LeaseTTL}
	for _, f := range a.families {
		if f.ipv6 {
			claim.VtepMACv6 = store.MAC(f.dev.MAC)
			if f.local.Is6() {
				claim.PublicIPv6 = a.underlay.PublicIPv6
			} else {
				claim.PublicIP = a.underlay.PublicIP // the IPv6 part rides the IPv4 underlay
			}
		} else {
			claim.VtepMAC, claim.PublicIP = store.MAC(f.dev.MAC), a.underlay.PublicIP
		}
	}
	if env, err := subnetfile.Read(a.cfg.SubnetFile); err == nil {
		if a.netCfg.EnableIPv4 && env.Network == a.netCfg.Network && env.Subnet.IsValid() {
			claim.Previous = env.Subnet.Masked()
		}
		if a.netCfg.EnableIPv6 && env.IPv6Network == a.netCfg.IPv6Network && env.IPv6Subnet.IsValid() {
			claim.PreviousIPv6 = env.IPv6Subnet.Masked()
		}
	}
	if expected, ok := expectedLease(a.table, a.underlay, claim); ok {
		if err := a.addressDevices(expected); err != nil {
			return err
		}
	}
	err := retry(ctx, a.log, a.tel, "acquiring a subnet lease", func(ctx context.Context) (err error) {
		a.own, err = store.AcquireLease(ctx, a.etcd, a.cfg.EtcdPrefix, a.netCfg, claim, a.log)
		return err
	})
	if err != nil {
		return err
	}
	own := a.own.Lease()
	a.table.SetOwn(own.Key)
	a.tel.setOwnLease(a.own)
	if err := a.addressDevices(own); err != nil {
		return err
	}
	a.startMasquerade(ctx, own.Subnet)
	return nil
}

// addressDevices gives each device its part's first address, and the
// overlay route.
func (a *agent) addressDevices(l store.Lease) error {
	for _, f := range a.families {
		p, ok := f.part(l)
		if !ok {
			continue
		}
		if _, err := f.dev.SetAddress(p.Gateway()); err != nil {
			return err
		}
		if _, err := f.dev.EnsureRoutes(p.Gateway(), f.overlayRoutes()); err != nil {
			return err
		}
	}
	return nil
}

// reconcileEntries makes a responder per device and brings each device's
// existing entries in line with the table: right ones kept, wrong ones
// fixed or deleted, and addresses the kernel asked about while no vtepd
// listened answered. From here on the table's changes reach the kernel,
// and the own lease is renewed.
func (a *agent) reconcileEntries(ctx context.Context) error {
	own := a.own.Lease()
	a.sweeper = newSweeper()
	a.tel.setListener(a.listener, a.sweeper)
	for _, f := range a.families {
		p, _ := f.part(own)
		limit, err := neighbourLimit(a.cfg.NeighbourLimit, f.ipv6)
		if err != nil {
			a.log.Debug("kernel neighbour table limit unreadable here; using the kernel's default", zap.Bool("ipv6", f.ipv6), zap.Error(err))
		}
		f.expiry = &expiry{idle: a.cfg.IdleTimeout, log: a.log.With(zap.String("family", f.name()))}
		f.responder = miss.NewResponder(miss.ResponderConfig{
			Ifindex: f.dev.Index, Network: f.network, Own: p.Subnet, Gateway: p.Gateway(),
			Mode: a.cfg.Answer, Observe: a.tel.observer(f.tel), Sweep: a.sweeper.newLease,
			NeighbourLimit: limit, Direct: f.direct(a.netCfg, a.underlay),
		}, a.table, f.entries, a.log.With(zap.String("family", f.name())))
		a.tel.setMissPath(f.tel, f.responder, f.entries, f.expiry)
	}
	a.changes.set(func(c store.Change) {
		for _, f := range a.families {
			f.responder.ApplyChange(c)
		}
		// Our key deleted, or saying something we did not write: let the
		// renewal find out whether to publish again or give up the subnet.
		if c.Old != nil && c.Old.Key == own.Key && c.New == nil ||
			c.New != nil && c.New.Key == own.Key && !c.New.SameTarget(a.own.Lease()) {
			a.own.Recheck()
		}
	})
	a.g.Go(func() error { return a.own.Hold(ctx, a.cfg.RenewMargin) })

	for _, f := range a.families {
		rec, err := f.responder.Reconcile()
		if err != nil {
			a.log.Warn("reconciling the device's entries with the lease table was incomplete", zap.String("device", f.dev.Name), zap.Error(err))
		}
		a.log.Info("device entries reconciled", zap.String("device", f.dev.Name), zap.Int("kept", rec.Kept), zap.Int("fixed", rec.Fixed),
			zap.Int("removed", rec.Removed), zap.Int("answered", rec.Answered))
	}
	return nil
}

// answerMisses starts the miss path and what watches over it: the sweeper,
// the listener, systemd's watchdog, the report of unusual counts, the idle
// peers' expiry, and each device's repair.
func (a *agent) answerMisses(ctx context.Context) error {
	own := a.own.Lease()
	responders := make([]*miss.Responder, len(a.families))
	for i, f := range a.families {
		responders[i] = f.responder
	}
	handle := responders[0].Handle
	if len(responders) > 1 {
		// Each responder takes only its own device's misses.
		handle = func(m *miss.Miss) {
			for _, r := range responders {
				r.Handle(m)
			}
		}
	}
	a.g.Go(func() error {
		a.sweeper.run(ctx, responders, a.log)
		return nil
	})
	a.g.Go(func() error { return a.listener.Run(ctx, handle, a.sweeper.overflowed) })
	a.g.Go(func() error { return a.sd.watchdog(ctx, a.listener.Turns) })
	a.g.Go(func() error {
		report(ctx, a.cfg.ReportInterval, a.log, responders, a.listener, a.table)
		return nil
	})
	for _, f := range a.families {
		if a.cfg.IdleTimeout > 0 {
			a.g.Go(func() error {
				f.expiry.run(ctx, f.responder)
				return nil
			})
		}
		p, _ := f.part(own)
		a.tel.setAddressing(f.tel, p.Gateway(), []netip.Prefix{f.network})
		a.g.Go(func() error {
			repairDevice(ctx, f.dev, p.Gateway(), f.overlayRoutes(), f.responder, a.log)
			return nil
		})
		forwarding, sysctl := fabric.IPForwarding, "net.ipv4.ip_forward"
		if f.ipv6 {
			forwarding, sysctl = fabric.IPv6Forwarding, "net.ipv6.conf.all.forwarding"
		}
		a.g.Go(func() error {
			watchForwarding(ctx, a.log, f.name(), sysctl, forwarding, forwardingGrace, forwardingCheck)
			return nil
		})
	}
	return nil
}

// writeSubnetFile writes the subnet file last: it is what tells Docker the
// overlay is ready, so the firewall rules must be in place first.
func (a *agent) writeSubnetFile(ctx context.Context) error {
	select {
	case <-a.firewallDone:
	case <-ctx.Done():
		return ctx.Err()
	}
	own := a.own.Lease()
	env := subnetfile.Env{IPMasq: a.cfg.IPMasq}
	for _, f := range a.families {
		// One MTU for the containers of both families: the smaller
		// device's (an IPv6 underlay costs 20 bytes more).
		if env.MTU == 0 || f.dev.MTU < env.MTU {
			env.MTU = f.dev.MTU
		}
		p, _ := f.part(own)
		if f.ipv6 {
			env.IPv6Network, env.IPv6Subnet = f.network, subnetfile.BridgeSubnet(p.Subnet)
		} else {
			env.Network, env.Subnet = f.network, subnetfile.BridgeSubnet(p.Subnet)
		}
	}
	return subnetfile.Write(a.cfg.SubnetFile, env)
}

// ready says so: in the log, to health, and to systemd.
func (a *agent) ready() {
	own := a.own.Lease()
	a.tel.setPhase("")
	var devices, subnets []string
	for _, f := range a.families {
		p, _ := f.part(own)
		devices, subnets = append(devices, f.dev.Name), append(subnets, p.Subnet.String())
	}
	a.log.Info("vtepd ready", zap.String("device", strings.Join(devices, ",")), zap.String("subnet", strings.Join(subnets, ",")),
		zap.Stringer("answer", a.cfg.Answer), zap.String("lease", own.String()), zap.Int("leases", a.table.Len()),
		zap.String("subnet_file", a.cfg.SubnetFile))
	a.sd.notify(fmt.Sprintf("READY=1\nSTATUS=answering misses for %s on %s, %d leases", strings.Join(subnets, " and "), strings.Join(devices, " and "), a.table.Len()))
	// Loading the table left garbage several times its size, which the
	// heap would keep mapped until the collector's scavenger got round to
	// it: hand it back now, once, so a host's memory is the table's and not
	// the start's (50,000 leases: RSS 92 MiB before this, see BENCHMARKS.md).
	debug.FreeOSMemory()
}
