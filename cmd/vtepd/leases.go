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
	// Invalid says why vtepd would skip the value.
	Invalid string `json:"invalid,omitempty"`
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

	prefix := store.SubnetsPrefix(etcd.prefix)
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("listing %s: %w", prefix, err)
	}
	rows := make([]leaseRow, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		row := leaseRow{Key: string(kv.Key), TTL: -1}
		if l, err := store.ParseLease(strings.TrimPrefix(row.Key, prefix), kv.Value); err != nil {
			row.Invalid = err.Error()
			var v struct{ BackendType string }
			if json.Unmarshal(kv.Value, &v) == nil {
				row.Backend = v.BackendType
			}
		} else {
			row.Subnet, row.PublicIP, row.VtepMAC, row.VNI, row.Backend = l.Subnet.String(), l.PublicIP.String(), l.VtepMAC.String(), l.VNI, "vxlan"
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
	fmt.Fprintln(w, "SUBNET\tPUBLIC IP\tVTEP MAC\tTTL\tBACKEND\tNOTE")
	for _, r := range rows {
		ttl := "none"
		if r.TTL >= 0 {
			ttl = (time.Duration(r.TTL) * time.Second).String()
		}
		subnet, note := r.Subnet, ""
		if r.Invalid != "" {
			subnet, note = strings.TrimPrefix(r.Key, prefix), "invalid: "+r.Invalid
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", subnet, dash(r.PublicIP), dash(r.VtepMAC), ttl, dash(r.Backend), note)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
