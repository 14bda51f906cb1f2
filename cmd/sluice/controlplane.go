package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/xds/controlplane"
	"github.com/sluice-mesh/sluice/xds/kube"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// defaultHealthAddr is where `sluice controlplane --kubernetes` serves
// /healthz and /readyz unless --health-addr says otherwise.
const defaultHealthAddr = ":15011"

func newControlPlaneCommand() *cobra.Command {
	var meshPath, listen, logLevel, kubeconfig, trustDomain, healthAddr string
	var useKube bool
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Serve a mesh file, or a Kubernetes cluster, as xDS (ADS, SotW and Delta) to Sluice agents",
		Long: `Serve xDS to Sluice agents from a mesh file (--mesh FILE) or from a Kubernetes
cluster's Services, EndpointSlices, Pods and MeshPolicies (--kubernetes).

With --kubernetes, /healthz and /readyz are served on --health-addr (default
` + defaultHealthAddr + `); /readyz answers 200 once the whole cluster has been read and
is served. With --mesh they are served only when --health-addr is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case useKube && meshPath != "":
				return errors.New("--kubernetes and --mesh are exclusive: serve either a cluster or a mesh file")
			case !useKube && meshPath == "":
				return errors.New("one of --mesh FILE or --kubernetes is required")
			case !useKube && (kubeconfig != "" || cmd.Flags().Changed("trust-domain")):
				return errors.New("--kubeconfig and --trust-domain apply to --kubernetes only; a mesh file names its trust domain")
			case useKube && cmd.Flags().Changed("config-poll"):
				return errors.New("--config-poll applies to --mesh only")
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			if !useKube && !cmd.Flags().Changed("health-addr") {
				healthAddr = ""
			}
			ctx := cmd.Context()
			if useKube {
				return serveKubernetes(ctx, log, kubeconfig, trustDomain, listen, healthAddr)
			}
			cp, err := controlplane.New(controlplane.Options{ConfigPath: meshPath, PollInterval: poll, Logger: log})
			if err != nil {
				return err
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			stop, err := serveHealth(ctx, log, healthAddr, func() bool { return true })
			if err != nil {
				lis.Close()
				return err
			}
			defer stop()
			log.Info("control plane serving", "listen", lis.Addr().String(), "mesh", meshPath, "version", cp.Version())
			return cp.Serve(ctx, lis)
		},
	}
	cmd.Flags().StringVar(&meshPath, "mesh", "", "mesh file to serve (this or --kubernetes)")
	cmd.Flags().BoolVar(&useKube, "kubernetes", false, "serve the Kubernetes cluster's Services, EndpointSlices, Pods and MeshPolicies (this or --mesh)")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file for --kubernetes (default: the in-cluster config)")
	cmd.Flags().StringVar(&trustDomain, "trust-domain", mesh.DefaultTrustDomain, "SPIFFE trust domain of the pods' identities, with --kubernetes")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:15010", "address to serve xDS on")
	cmd.Flags().StringVar(&healthAddr, "health-addr", defaultHealthAddr, "address to serve /healthz and /readyz on; empty: none (with --mesh: none unless given)")
	cmd.Flags().DurationVar(&poll, "config-poll", time.Second, "how often the mesh file is checked for edits")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// serveKubernetes serves the cluster kubeconfig (or the in-cluster config)
// leads to until ctx ends.
func serveKubernetes(ctx context.Context, log *slog.Logger, kubeconfig, trustDomain, listen, healthAddr string) error {
	cfg, err := kubeConfig(kubeconfig)
	if err != nil {
		return err
	}
	cfg.UserAgent = "sluice-controlplane"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	srv, err := kube.New(kube.Options{Client: client, Dynamic: dyn, TrustDomain: trustDomain, Logger: log})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	stop, err := serveHealth(ctx, log, healthAddr, srv.Ready)
	if err != nil {
		lis.Close()
		return err
	}
	defer stop()
	log.Info("control plane starting", "listen", lis.Addr().String(), "kubernetes", cfg.Host, "trust_domain", trustDomain)
	return srv.Serve(ctx, lis)
}

// serveHealth serves /healthz (always 200) and /readyz (200 when ready
// says so, else 503) on addr until the returned stop is called; nothing if
// addr is empty.
func serveHealth(ctx context.Context, log *slog.Logger, addr string, ready func() bool) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--health-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: still reading the cluster", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health endpoint stopped", "addr", addr, "error", err.Error())
		}
	}()
	log.Info("health endpoint serving", "addr", lis.Addr().String())
	return func() { _ = hs.Close() }, nil
}
