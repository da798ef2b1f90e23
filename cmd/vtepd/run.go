package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/etcdclient"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/vtepd/vtepd/agent"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/subnetfile"
	"go.uber.org/zap"
)

// runSetup is what `vtepd run` was told, checked.
type runSetup struct {
	cfg     agent.Config
	logs    logFlags
	version bool // --version: print it and exit
	// warnings are logged once the logger exists.
	warnings []string
}

func runCommand(args []string, stdout, stderr io.Writer) error {
	s, err := parseRun(args, stderr)
	if err != nil {
		return err
	}
	if s.version {
		fmt.Fprintln(stdout, "vtepd", version)
		return nil
	}
	cfg := s.cfg
	log, err := s.logs.logger(stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	for _, w := range s.warnings {
		log.Warn(w)
	}

	ctx, stop := signalContext()
	defer stop()
	log.Info("vtepd starting", zap.String("version", version), zap.Strings("etcd_endpoints", cfg.Etcd.Endpoints), zap.String("etcd_prefix", cfg.EtcdPrefix))
	if err := agent.Run(ctx, cfg, log); err != nil {
		log.Error("vtepd stopped", zap.Error(err))
		if errors.Is(err, etcdclient.ErrAuth) {
			// A rejected password fails again at every restart: exit
			// status 2, which the unit does not restart into a loop.
			return usageError{err}
		}
		return err
	}
	if errors.Is(context.Cause(ctx), agent.ErrHandover) {
		return reexec(log)
	}
	log.Info("vtepd stopped; device, entries and lease left in place for the next start")
	return nil
}

// parseRun parses and checks the flags of `vtepd run`, which are also
// vtepd's with no command: vtepd's own, and flanneld's (flanneld.go). It
// touches nothing but the TLS and password files it checks.
func parseRun(args []string, stderr io.Writer) (runSetup, error) {
	fs := newFlagSet("run", stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: vtepd run [flags]\n   or: vtepd [flags]   (no command runs the agent, as flanneld does)\n\n"+
			"Flags (each also from VTEPD_<FLAG>, e.g. VTEPD_ETCD_ENDPOINTS; flanneld's also from FLANNELD_<FLAG>,\n"+
			"read when VTEPD_<FLAG> is unset or empty; a flag on the command line wins over both):\n")
		fs.PrintDefaults()
	}
	var etcd etcdFlags
	etcd.register(fs)
	ifaces := &listFlag{}
	fs.Var(ifaces, "iface", "underlay interface, by name or address (repeatable; first match wins; default: the interface of the default route)")
	ifaceRegexes := &listFlag{whole: true}
	fs.Var(ifaceRegexes, "iface-regex", "regular expression matching the underlay interface's name or address (repeatable; tried after --iface)")
	var publicIP addrFlag
	fs.Var(&publicIP, "public-ip", "address published to other hosts (default: the underlay interface's address)")
	publicIPv6 := addrFlag{ipv6: true}
	fs.Var(&publicIPv6, "public-ipv6", "IPv6 address published to other hosts for the overlay's IPv6 part (default: the underlay interface's IPv6 address)")
	device := fs.String("device", "", "IPv4 VXLAN device name (default flannel.<VNI>)")
	deviceV6 := fs.String("device-v6", "", "IPv6 VXLAN device name (default flannel-v6.<VNI>)")
	subnetFile := fs.String("subnet-file", subnetfile.DefaultPath, "where to write the subnet file for Docker")
	leaseTTL := fs.Duration("subnet-lease-ttl", store.DefaultLeaseTTL, "TTL of this host's subnet lease in etcd")
	renewMargin := fs.Int("subnet-lease-renew-margin", int(store.DefaultRenewMargin/time.Minute), "renew the subnet lease this many minutes before it expires (flannel's flag)")
	readBuffer := fs.Int("netlink-rcvbuf", miss.DefaultReadBuffer, "receive buffer of the miss socket, in bytes: what a miss storm can queue before the kernel drops notifications")
	reportInterval := fs.Duration("report-interval", agent.DefaultReportInterval, "how often unanswered misses and losses are summarised in the log")
	idleTimeout := fs.Duration("idle-timeout", agent.DefaultIdleTimeout, "remove the entries pointing at a peer once nothing has been sent to it for this long (0: never); answers are PERMANENT, so nothing else does")
	neighbourLimit := fs.Int("neighbour-limit", 0, "most PERMANENT neighbour entries on the device; past it answers are REACHABLE and age (0: the kernel's gc_thresh3, or 1024 where it cannot be read)")
	answer := fs.String("answer", "address", "what an L3 miss installs: address (a neighbour entry per address) or host (a route and one neighbour entry per peer host, far below the kernel's table limit)")
	httpAddr := fs.String("http-addr", agent.DefaultHTTPAddr, "where to serve /metrics, /healthz, /readyz, /status and /debug/ (loopback clients only) (empty: nowhere)")
	ipMasq := fs.Bool("ip-masq", false, "masquerade traffic from this host's subnet to outside the overlay, in an nftables table of its own, ip vtepd-nat-<device> (then run dockerd with --ip-masq=false)")
	forwardRules := fs.Bool("forward-rules", true, "accept overlay traffic in FORWARD, or Docker's DOCKER-USER chain, for hosts whose FORWARD policy is DROP")
	var logs logFlags
	logs.register(fs)
	var fl flanneldFlags
	fl.register(fs)
	p, err := parseFlagsEnv(fs, args, fl.envSpec())
	if err != nil {
		return runSetup{}, err
	}
	if *fl.version {
		return runSetup{version: true}, nil
	}

	etcd.origins = p.origins
	etcdCfg, err := etcd.config()
	if err != nil {
		return runSetup{}, err
	}
	cfg := agent.Config{
		Etcd:           etcdCfg,
		EtcdPrefix:     etcd.prefix,
		DeviceName:     *device,
		DeviceNameV6:   *deviceV6,
		SubnetFile:     *subnetFile,
		LeaseTTL:       *leaseTTL,
		RenewMargin:    time.Duration(*renewMargin) * time.Minute,
		ReadBuffer:     *readBuffer,
		ReportInterval: *reportInterval,
		IdleTimeout:    *idleTimeout,
		NeighbourLimit: *neighbourLimit,
		IPMasq:         *ipMasq,
		FirewallResync: time.Duration(*fl.iptablesResync) * time.Second,
		Version:        version,
	}
	if cfg.ForwardRules, err = fl.forwardRules(p, forwardRules); err != nil {
		return runSetup{}, err
	}
	if logs.level, err = fl.logLevel(p, logs.level); err != nil {
		return runSetup{}, err
	}
	if cfg.HTTPAddr, err = fl.httpAddr(p, *httpAddr); err != nil {
		return runSetup{}, err
	}
	if cfg.Answer, err = miss.ParseAnswerMode(*answer); err != nil {
		return runSetup{}, usageError{fmt.Errorf("invalid value for %s: %v", p.where("answer"), err)}
	}
	cfg.Underlay.Ifaces = ifaces.values
	cfg.Underlay.PublicIP = publicIP.addr
	cfg.Underlay.PublicIPv6 = publicIPv6.addr
	for _, s := range ifaceRegexes.values {
		re, err := regexp.Compile(s)
		if err != nil {
			return runSetup{}, usageError{fmt.Errorf("invalid value %q for %s: %v", s, p.where("iface-regex"), err)}
		}
		cfg.Underlay.IfaceRegexes = append(cfg.Underlay.IfaceRegexes, re)
	}
	if err := checkHostPort(cfg.HTTPAddr); err != nil {
		return runSetup{}, usageError{fmt.Errorf("invalid value %q for %s: %v", cfg.HTTPAddr, p.where("http-addr"), err)}
	}
	switch {
	case cfg.LeaseTTL < 10*time.Second:
		return runSetup{}, usageError{fmt.Errorf("invalid value %s for %s: want at least 10s", cfg.LeaseTTL, p.where("subnet-lease-ttl"))}
	case cfg.ReadBuffer < 4096:
		return runSetup{}, usageError{fmt.Errorf("invalid value %d for %s: want at least 4096 bytes", cfg.ReadBuffer, p.where("netlink-rcvbuf"))}
	case cfg.ReportInterval < time.Second:
		return runSetup{}, usageError{fmt.Errorf("invalid value %s for %s: want at least 1s", cfg.ReportInterval, p.where("report-interval"))}
	case cfg.IdleTimeout < 0:
		return runSetup{}, usageError{fmt.Errorf("invalid value %s for %s: want 0 (never) or more", cfg.IdleTimeout, p.where("idle-timeout"))}
	case cfg.NeighbourLimit < 0:
		return runSetup{}, usageError{fmt.Errorf("invalid value %d for %s: want 0 (the kernel's gc_thresh3) or more", cfg.NeighbourLimit, p.where("neighbour-limit"))}
	case cfg.RenewMargin <= 0 || cfg.RenewMargin >= 24*time.Hour:
		return runSetup{}, usageError{fmt.Errorf("invalid value %d for %s: want more than 0 and less than 1440 minutes (24h)", *renewMargin, p.where("subnet-lease-renew-margin"))}
	case *fl.iptablesResync < 1:
		return runSetup{}, usageError{fmt.Errorf("invalid value %d for %s: want at least 1 second", *fl.iptablesResync, p.where("iptables-resync"))}
	}
	return runSetup{cfg: cfg, logs: logs, warnings: p.warnings}, nil
}

// signalContext is cancelled by SIGTERM or SIGINT (a stop), or by SIGHUP
// with the cause agent.ErrHandover (a restart in place: see reexec).
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				cancel(agent.ErrHandover)
			} else {
				cancel(fmt.Errorf("vtepd: %v", sig))
			}
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}

// reexec replaces this process with the vtepd binary now at its path,
// same arguments, same environment, same PID: the upgrade path. A stop and
// a start would cost traffic on a host whose FORWARD policy is DROP, since a
// clean stop removes the forward rules; a handover keeps them, and
// device, entries and lease stay as on every stop. Under systemd the unit's
// ExecReload sends SIGHUP, and the new vtepd's READY=1 ends the reload.
func reexec(log *zap.Logger) error {
	path := os.Args[0]
	if !filepath.IsAbs(path) {
		// Resolve it now, not from /proc/self/exe: that names the old
		// binary, deleted when the new one was installed over it.
		p, err := exec.LookPath(path)
		if err != nil {
			return fmt.Errorf("restart in place: find %s: %w", path, err)
		}
		path = p
	}
	log.Info("restarting in place: executing the vtepd binary again", zap.String("path", path))
	log.Sync()
	// RELOADING=1 tells systemd to wait for the new process's READY=1.
	daemon.SdNotify(false, "RELOADING=1\nSTATUS=restarting in place\n"+daemon.SdNotifyMonotonicUsec())
	if err := syscall.Exec(path, os.Args, os.Environ()); err != nil {
		return fmt.Errorf("restart in place: exec %s: %w", path, err)
	}
	return nil // not reached
}

// checkHostPort accepts "" (no HTTP server) and host:port with a port
// number, as net.Listen would: a mistake there is a usage error at start,
// not a failure that a service manager restarts in a loop.
func checkHostPort(s string) error {
	if s == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}
