package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vtepd/vtepd/etcdclient"

	"github.com/vtepd/vtepd/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// leaseRow is one key under <prefix>/subnets/ as `vtepd leases` shows it.
type leaseRow struct {
	Key      string `json:"key"`
	Subnet   string `json:"subnet,omitempty"`
	PublicIP string `json:"public_ip,omitempty"`
	VtepMAC  string `json:"vtep_mac,omitempty"`
	VNI      int    `json:"vni,omitempty"`
	Backend  string `json:"backend,omitempty"`
	// TTL is the time left on the key's etcd lease, in seconds; -1 for a
	// key bound to no lease.
	TTL int64 `json:"ttl_seconds"`
	// Status is what vtepd's lease table makes of the key: valid, invalid
	// (skipped) or conflict (waiting for an older lease it clashes with to
	// go); Reason says why.
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

func leasesCommand(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("leases", stderr)
	var etcd etcdFlags
	etcd.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := etcd.config()
	if err != nil {
		return err
	}
	c, err := etcdclient.New(cfg, zap.NewNop())
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	// The leases are judged as the agent's table judges them, which takes
	// the network config: read at the same revision as the leases.
	configKey, prefix := store.ConfigKey(etcd.prefix), store.SubnetsPrefix(etcd.prefix)
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("listing %s: %w", prefix, err)
	}
	cresp, err := c.Get(ctx, configKey, clientv3.WithRev(resp.Header.Revision))
	if err != nil {
		return fmt.Errorf("reading the network config %s: %w", configKey, err)
	}
	if len(cresp.Kvs) == 0 {
		return fmt.Errorf("no network config at %s: the leases cannot be judged without it", configKey)
	}
	netCfg, err := store.ParseConfig(configKey, cresp.Kvs[0].Value)
	if err != nil {
		return fmt.Errorf("%w: the leases cannot be judged without a valid one", err)
	}
	verdicts := store.Audit(netCfg, etcd.prefix, resp.Kvs)
	rows := make([]leaseRow, 0, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		v := verdicts[i]
		row := leaseRow{Key: v.Key, TTL: -1, Status: v.Status, Reason: v.Reason}
		if v.Status != "invalid" {
			l := v.Lease
			row.Subnet, row.PublicIP, row.VtepMAC, row.VNI, row.Backend = l.Subnet.String(), l.PublicIP.String(), l.VtepMAC.String(), l.VNI, "vxlan"
		} else {
			var val struct{ BackendType string }
			if json.Unmarshal(kv.Value, &val) == nil {
				row.Backend = val.BackendType
			}
		}
		if kv.Lease != 0 {
			if ttl, err := c.TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
				row.TTL = ttl.TTL
			}
		}
		rows = append(rows, row)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	w := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SUBNET\tPUBLIC IP\tVTEP MAC\tTTL\tBACKEND\tSTATUS\tWHY")
	for _, r := range rows {
		ttl := "none"
		if r.TTL >= 0 {
			ttl = (time.Duration(r.TTL) * time.Second).String()
		}
		subnet := r.Subnet
		if subnet == "" {
			subnet = strings.TrimPrefix(r.Key, prefix)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", subnet, dash(r.PublicIP), dash(r.VtepMAC), ttl, dash(r.Backend), r.Status, r.Reason)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
