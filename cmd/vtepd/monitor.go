package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/etcdclient"

	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/monitor"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
)

func monitorCommand(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("monitor", stderr)
	var etcd etcdFlags
	etcd.register(fs)
	withEtcd := false
	dev := fs.String("dev", "", "show only this device's misses (default: every VXLAN device)")
	kind := fs.String("kind", "", "show only misses of this kind: l3 (neighbour) or l2 (FDB)")
	settle := fs.Duration("settle", 50*time.Millisecond, "read the kernel's entries this long after each miss, to show whether it was answered")
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "etcd-endpoints" || f.Name == "etcd-prefix" {
			withEtcd = true
		}
	})
	opts := monitor.Options{Device: *dev, Settle: *settle, JSON: *asJSON}
	switch *kind {
	case "":
	case "l3", "L3":
		opts.Kind = miss.L3
	case "l2", "L2":
		opts.Kind = miss.L2
	default:
		return usageError{fmt.Errorf("invalid value %q for --kind: want l3 or l2", *kind)}
	}
	if *settle < 0 {
		return usageError{fmt.Errorf("invalid value %s for --settle: want 0 or more", *settle)}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := zap.NewNop()
	if withEtcd {
		cfg, err := etcd.config()
		if err != nil {
			return err
		}
		c, err := etcdclient.New(cfg, log)
		if err != nil {
			return err
		}
		defer c.Close()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		netCfg, err := store.WaitConfig(wctx, c, etcd.prefix, log, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("reading the network config at %s: %w", store.ConfigKey(etcd.prefix), err)
		}
		table := store.NewTable(netCfg)
		done := make(chan struct{})
		go func() {
			defer close(done)
			table.Sync(ctx, c, etcd.prefix, log)
		}()
		defer func() { stop(); <-done }()
		select {
		case <-table.Synced():
		case <-ctx.Done():
			return nil // Ctrl-C while the leases load: a clean exit, as from Run
		case <-time.After(10 * time.Second):
			return fmt.Errorf("listing the leases under %s took more than 10s", store.SubnetsPrefix(etcd.prefix))
		}
		opts.Leases = table
		for _, n := range []netip.Prefix{netCfg.Network, netCfg.IPv6Network} {
			if n.IsValid() {
				opts.Networks = append(opts.Networks, n)
			}
		}
	}
	m, err := monitor.New(stdout, opts)
	if err != nil {
		return err
	}
	defer m.Close()
	// Subscribed from here on: a miss after this line is shown. On stderr,
	// so that --json output stays one object per line.
	fmt.Fprintln(stderr, "vtepd monitor: listening for misses; Ctrl-C to stop")
	return m.Run(ctx)
}
