package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

// recordsFlushTimeout bounds how long a stopping proxy tries to send the
// agent its last request records.
const recordsFlushTimeout = 2 * time.Second

type proxyFlags struct {
	listen   []string
	pinDir   string
	socket   string
	logLevel string
	drain    time.Duration
}

func newProxyCommand() *cobra.Command {
	var f proxyFlags
	var configFile string
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the node's L7 proxy: serve the requests of L7 services",
		Long: "Runs Sluice's node-local L7 proxy. The dataplane hands it the connections to L7 services\n" +
			"(listeners with an http_connection_manager); it routes and authorizes each HTTP/1.1, HTTP/2\n" +
			"or gRPC request by the configuration the node's agent feeds it over the agent's local API\n" +
			"socket. It is a process of its own so that restarting the agent drops no request: while the\n" +
			"agent is away it serves its last configuration (docs/l7.md). Give the agent the same\n" +
			"addresses (--l7-proxy). Flags can also be set as the agent's are (SLUICE_LISTEN, --config;\n" +
			"docs/config.md).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applySettings(cmd.Flags(), os.LookupEnv, os.ReadFile); err != nil {
				return err
			}
			log, err := newLogger(f.logLevel)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return runProxy(ctx, f, log)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configFile, configFlag, "", "settings file: a YAML mapping of these flags' long names to values (also SLUICE_CONFIG)")
	fl.StringSliceVar(&f.listen, "listen", nil, "where to listen, IPv4:port and/or [IPv6]:port: the node's address the agent's --l7-proxy names (required)")
	fl.StringVar(&f.pinDir, "pin-dir", dataplane.DefaultBPFFS+"/sluice", "the agent's bpffs pin directory")
	fl.StringVar(&f.socket, "agent-socket", observe.DefaultSocket, "the agent's local API socket, where its L7 configuration comes from")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.DurationVar(&f.drain, "drain", 10*time.Second, "on SIGTERM, how long requests in flight may take to finish")
	return cmd
}

func runProxy(ctx context.Context, f proxyFlags, log *slog.Logger) error {
	addrs, err := parseL7Proxy("--listen", f.listen)
	if err != nil {
		return err
	}
	if len(addrs) == 0 {
		return errors.New("--listen: give the address(es) to listen on, as the agent's --l7-proxy")
	}
	conns, err := waitL7Conns(ctx, f.pinDir, log)
	if err != nil {
		return err
	}
	defer conns.Close()

	var lc net.ListenConfig
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for _, ap := range addrs {
		l, err := lc.Listen(ctx, "tcp", ap.String())
		if err != nil {
			return fmt.Errorf("--listen %s: %w", ap, err)
		}
		listeners = append(listeners, l)
	}

	agent := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", f.socket)
		},
		DisableCompression: true,
	}}
	records := l7.NewRecordSender(l7.RecordSenderOptions{Client: agent, Logger: log.With("component", "records")})
	p := l7.New(l7.Options{
		Origin: func(_, remote netip.AddrPort) (l7.Origin, error) {
			o, err := conns.Take(remote)
			if err != nil {
				return l7.Origin{}, err
			}
			return l7.Origin{Service: o.Service, Client: remote, Identity: o.Identity}, nil
		},
		Dial:   upstreamDialer(addrs, conns),
		Record: records.Record,
		Logger: log,
	})
	// Records are sent on through the drain, and flushed after it.
	recordsCtx, stopRecords := context.WithCancel(context.Background())
	defer stopRecords()
	recordsDone := make(chan struct{})
	go func() {
		defer close(recordsDone)
		records.Run(recordsCtx)
	}()
	// The feed ends with the proxy's serving, also when a listener fails.
	ctx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		l7.Follow(ctx, agent, func(s *l7.Snapshot) error {
			cfg, err := l7.NewConfig(s.Services, s.Identities)
			if err != nil {
				return err
			}
			p.SetConfig(cfg)
			return nil
		}, 100*time.Millisecond, log.With("component", "feed"))
	}()

	served := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { served <- p.Serve(l) }()
	}
	log.Info("L7 proxy started", "listen", addrs, "pin_dir", f.pinDir, "agent_socket", f.socket)
	select {
	case err = <-served:
		err = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		err = nil
	}
	stopFeed()
	drain, cancel := context.WithTimeout(context.Background(), f.drain)
	defer cancel()
	if serr := p.Shutdown(drain); serr != nil {
		log.Warn("requests still in flight when the drain time ended were cut", "drain", f.drain, "err", serr)
	}
	stopRecords()
	<-recordsDone
	// Best effort: the last requests are recorded if the agent takes
	// them now.
	flush, cancelFlush := context.WithTimeout(context.Background(), recordsFlushTimeout)
	defer cancelFlush()
	if ferr := records.Flush(flush); ferr != nil {
		log.Warn("request records not sent to the agent before stopping", "waiting", records.Stats().Waiting, "err", ferr)
	}
	<-feedDone
	log.Info("L7 proxy stopped")
	return err
}

// waitL7Conns opens the agent's maps, waiting for an agent that has not
// made them yet (the agent and the proxy start side by side).
func waitL7Conns(ctx context.Context, pinDir string, log *slog.Logger) (*dataplane.L7Conns, error) {
	logged := false
	for {
		conns, err := dataplane.OpenL7Conns(pinDir)
		if err == nil {
			return conns, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if !logged {
			log.Info("waiting for the agent's dataplane", "pin_dir", pinDir, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// upstreamDialer connects to upstreams from the proxy's own address of the
// upstream's family (which the dataplane trusts to speak for clients),
// with the socket tagged with the client's identity.
func upstreamDialer(addrs dataplane.L7Proxy, conns *dataplane.L7Conns) func(ctx context.Context, addr netip.AddrPort, identity uint32) (net.Conn, error) {
	return func(ctx context.Context, addr netip.AddrPort, identity uint32) (net.Conn, error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		if src, ok := addrs.For(addr.Addr()); ok {
			d.LocalAddr = &net.TCPAddr{IP: src.Addr().AsSlice()}
		}
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var err error
			if cerr := rc.Control(func(fd uintptr) { err = conns.Speak(int(fd), identity) }); cerr != nil {
				return cerr
			}
			return err
		}
		return d.DialContext(ctx, "tcp", addr.String())
	}
}
