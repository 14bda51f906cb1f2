package main

import (
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/xds/controlplane"
)

func newControlPlaneCommand() *cobra.Command {
	var meshPath, listen, logLevel string
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Serve a mesh file as xDS (ADS, SotW and Delta) to Sluice agents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			cp, err := controlplane.New(controlplane.Options{ConfigPath: meshPath, PollInterval: poll, Logger: log})
			if err != nil {
				return err
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			log.Info("control plane serving", "listen", lis.Addr().String(), "mesh", meshPath, "version", cp.Version())
			return cp.Serve(cmd.Context(), lis)
		},
	}
	cmd.Flags().StringVar(&meshPath, "mesh", "", "mesh file to serve (required)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:15010", "address to serve xDS on")
	cmd.Flags().DurationVar(&poll, "config-poll", time.Second, "how often the mesh file is checked for edits")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("mesh")
	return cmd
}
