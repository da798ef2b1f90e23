package store

import "go.etcd.io/etcd/api/v3/mvccpb"

// LeaseVerdict is what vtepd's lease table makes of one key under a
// subnets prefix.
type LeaseVerdict struct {
	Key string
	// Lease is the parsed lease (for a valid or a conflicting key).
	Lease Lease
	// Status is "valid" (the table admits it), "invalid" (it is skipped:
	// it does not parse, or does not fit the network config) or "conflict"
	// (valid alone, but an older lease overlaps it or shares its MAC).
	Status string
	// Reason says why it is invalid or in conflict.
	Reason string
}

// Audit judges the keys of a subnets prefix exactly as a Table kept by Sync
// would, under cfg: the same parsing, the same checks against the network
// config, the same admission (oldest first; nobody's own lease first, as
// an outside observer has none). prefix is the etcd prefix (the one
// holding config and subnets/). The verdicts are in the order of kvs.
func Audit(cfg Config, prefix string, kvs []*mvccpb.KeyValue) []LeaseVerdict {
	t := NewTable(cfg)
	s := &syncer{t: t, prefix: SubnetsPrefix(prefix), warned: map[string]int64{}}
	out := make([]LeaseVerdict, len(kvs))
	var valid []Lease
	for i, kv := range kvs {
		out[i].Key = string(kv.Key)
		l, err := s.parseKV(kv)
		if err != nil {
			out[i].Status, out[i].Reason = "invalid", err.Error()
			continue
		}
		out[i].Lease, out[i].Status = l, "valid"
		valid = append(valid, l)
	}
	_, rejected := t.replaceAll(valid)
	for i := range out {
		if err, ok := rejected[out[i].Key]; ok && out[i].Status == "valid" {
			out[i].Status, out[i].Reason = "conflict", err.Error()
		}
	}
	return out
}
