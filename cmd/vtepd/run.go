package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/agent"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/subnetfile"
	"go.uber.org/zap"
)

func runCommand(args []string, _, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	var etcd etcdFlags
	etcd.register(fs)
	ifaces := &listFlag{}
	fs.Var(ifaces, "iface", "underlay interface, by name or address (repeatable; first match wins; default: the interface of the default route)")
	ifaceRegexes := &listFlag{}
	fs.Var(ifaceRegexes, "iface-regex", "regular expression matching the underlay interface's name or address (repeatable; tried after --iface)")
	var publicIP addrFlag
	fs.Var(&publicIP, "public-ip", "address published to other hosts (default: the underlay interface's address)")
	device := fs.String("device", "", "VXLAN device name (default flannel.<VNI>)")
	subnetFile := fs.String("subnet-file", subnetfile.DefaultPath, "where to write the subnet file for Docker")
	leaseTTL := fs.Duration("subnet-lease-ttl", store.DefaultLeaseTTL, "TTL of this host's subnet lease in etcd")
	renewMargin := fs.Int("subnet-lease-renew-margin", int(store.DefaultRenewMargin/time.Minute), "renew the subnet lease this many minutes before it expires (flannel's flag)")
	readBuffer := fs.Int("netlink-rcvbuf", miss.DefaultReadBuffer, "receive buffer of the miss socket, in bytes: what a miss storm can queue before the kernel drops notifications")
	reportInterval := fs.Duration("report-interval", agent.DefaultReportInterval, "how often unanswered misses and losses are summarised in the log")
	answer := fs.String("answer", "address", "what an L3 miss installs: address (a neighbour entry per address) or host (a route and one neighbour entry per peer host, far below the kernel's table limit)")
	httpAddr := fs.String("http-addr", agent.DefaultHTTPAddr, "where to serve /metrics, /healthz, /status and /debug/ (empty: nowhere)")
	var logs logFlags
	logs.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	etcdCfg, err := etcd.config()
	if err != nil {
		return err
	}
	cfg := agent.Config{
		Etcd:           etcdCfg,
		EtcdPrefix:     etcd.prefix,
		DeviceName:     *device,
		SubnetFile:     *subnetFile,
		LeaseTTL:       *leaseTTL,
		RenewMargin:    time.Duration(*renewMargin) * time.Minute,
		ReadBuffer:     *readBuffer,
		ReportInterval: *reportInterval,
		HTTPAddr:       *httpAddr,
		Version:        version,
	}
	if cfg.Answer, err = miss.ParseAnswerMode(*answer); err != nil {
		return usageError{fmt.Errorf("invalid value for --answer: %v", err)}
	}
	cfg.Underlay.Ifaces = ifaces.values
	cfg.Underlay.PublicIP = publicIP.addr
	for _, s := range ifaceRegexes.values {
		re, err := regexp.Compile(s)
		if err != nil {
			return usageError{fmt.Errorf("invalid value %q for --iface-regex: %v", s, err)}
		}
		cfg.Underlay.IfaceRegexes = append(cfg.Underlay.IfaceRegexes, re)
	}
	switch {
	case cfg.LeaseTTL < 10*time.Second:
		return usageError{fmt.Errorf("invalid value %s for --subnet-lease-ttl: want at least 10s", cfg.LeaseTTL)}
	case cfg.ReadBuffer < 4096:
		return usageError{fmt.Errorf("invalid value %d for --netlink-rcvbuf: want at least 4096 bytes", cfg.ReadBuffer)}
	case cfg.ReportInterval < time.Second:
		return usageError{fmt.Errorf("invalid value %s for --report-interval: want at least 1s", cfg.ReportInterval)}
	case cfg.RenewMargin <= 0 || cfg.RenewMargin >= 24*time.Hour:
		return usageError{fmt.Errorf("invalid value %d for --subnet-lease-renew-margin: want more than 0 and less than 1440 minutes (24h)", *renewMargin)}
	}

	log, err := logs.logger(stderr)
	if err != nil {
		return err
	}
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("vtepd starting", zap.String("version", version), zap.Strings("etcd_endpoints", cfg.Etcd.Endpoints), zap.String("etcd_prefix", cfg.EtcdPrefix))
	if err := agent.Run(ctx, cfg, log); err != nil {
		log.Error("vtepd stopped", zap.Error(err))
		return err
	}
	log.Info("vtepd stopped; device, entries and lease left in place for the next start")
	return nil
}
