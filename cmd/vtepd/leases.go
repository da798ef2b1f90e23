package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
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
	// The IPv6 part of a dual-stack or IPv6-only lease.
	IPv6Subnet string `json:"ipv6_subnet,omitempty"`
	PublicIPv6 string `json:"public_ipv6,omitempty"`
	VtepMACv6  string `json:"vtep_mac_v6,omitempty"`
	VNI        int    `json:"vni,omitempty"`
	Backend    string `json:"backend,omitempty"`
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
			row.VNI, row.Backend = l.VNI, "vxlan"
			if p, ok := l.IPv4(); ok {
				row.Subnet, row.PublicIP, row.VtepMAC = p.Subnet.String(), p.PublicIP.String(), p.VtepMAC.String()
			}
			if p, ok := l.IPv6(); ok {
				row.IPv6Subnet, row.PublicIPv6, row.VtepMACv6 = p.Subnet.String(), p.PublicIP.String(), p.VtepMAC.String()
			}
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
	// IPv6 columns only where some lease has an IPv6 part: an IPv4
	// overlay's table stays as narrow as it was.
	ipv6 := slices.ContainsFunc(rows, func(r leaseRow) bool { return r.IPv6Subnet != "" })
	w := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	if ipv6 {
		fmt.Fprintln(w, "SUBNET\tPUBLIC IP\tVTEP MAC\tIPV6 SUBNET\tPUBLIC IPV6\tVTEP MAC V6\tTTL\tBACKEND\tSTATUS\tWHY")
	} else {
		fmt.Fprintln(w, "SUBNET\tPUBLIC IP\tVTEP MAC\tTTL\tBACKEND\tSTATUS\tWHY")
	}
	for _, r := range rows {
		ttl := "none"
		if r.TTL >= 0 {
			ttl = (time.Duration(r.TTL) * time.Second).String()
		}
		subnet := r.Subnet
		if subnet == "" && r.IPv6Subnet == "" {
			subnet = strings.TrimPrefix(r.Key, prefix)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t", dash(subnet), dash(r.PublicIP), dash(r.VtepMAC))
		if ipv6 {
			fmt.Fprintf(w, "%s\t%s\t%s\t", dash(r.IPv6Subnet), dash(r.PublicIPv6), dash(r.VtepMACv6))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", ttl, dash(r.Backend), r.Status, r.Reason)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
