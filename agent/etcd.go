package agent

import (
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// EtcdConfig says how to reach etcd.
type EtcdConfig struct {
	Endpoints []string
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
