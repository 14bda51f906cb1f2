package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/e2e/demo"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "sluice",
		Short:         "Sluice: a sidecarless service-mesh dataplane for Linux",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newAgentCommand(), newControlPlaneCommand(), newDemoCommand(), newDemoBackendCommand(), newUninstallCommand(), newVersionCommand(), newObserveCommand(), newStatusCommand(), newProxyCommand())
	return root
}

func newDemoCommand() *cobra.Command {
	var requests int
	var meshPath string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the standalone demo on a simulated cluster (needs root)",
		Long: "Creates a two-node simulated cluster on this host (a node is a cgroup subtree, a pod a network\n" +
			"namespace) from the mesh file's workloads, runs a sluice agent per node with its embedded control\n" +
			"plane fed from a copy of the file, and shows with curl and bash: load balancing across the nodes,\n" +
			"a live edit of the file, a call the file's policy denies, sluice observe's flows, a few metrics,\n" +
			"and routing without agents until sluice uninstall. Then it removes everything and checks that\n" +
			"nothing is left. It exits non-zero, naming the step, if anything misbehaves.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			return demo.Run(cmd.Context(), demo.Options{Out: cmd.OutOrStdout(), Self: self, Mesh: meshPath, Requests: requests})
		},
	}
	cmd.Flags().IntVar(&requests, "requests", 40, "requests per load-balancing round")
	cmd.Flags().StringVar(&meshPath, "mesh", "examples/mesh.yaml", "mesh file the demo starts from (it edits a copy)")
	return cmd
}

func newDemoBackendCommand() *cobra.Command {
	var name, listen, udpListen string
	cmd := &cobra.Command{
		Use:    "demo-backend",
		Short:  "HTTP server that answers with its name (used by the demo)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo.ServeBackend(cmd.Context(), name, listen, udpListen, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&name, "name", "backend", "name to answer with")
	cmd.Flags().StringVar(&listen, "listen", "", "address to serve HTTP on (optional)")
	cmd.Flags().StringVar(&udpListen, "udp-listen", "", "address to answer UDP datagrams on (optional)")
	return cmd
}

func newUninstallCommand() *cobra.Command {
	var pinDir, cgroup string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Detach Sluice's programs and remove its pinned maps and links",
		Long: "Removes the dataplane an agent left pinned in --pin-dir: its links (which detaches its\n" +
			"programs from the cgroup), its maps and the directory. Then it checks that nothing is\n" +
			"left: the directory is gone and no Sluice program is attached to the cgroup, and fails\n" +
			"naming what is left otherwise. It refuses while an agent holds the directory.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, statErr := os.Stat(pinDir)
			checked, err := dataplane.Uninstall(pinDir, cgroup)
			if err != nil {
				return err
			}
			did := "removed " + pinDir
			if errors.Is(statErr, fs.ErrNotExist) {
				did = "nothing pinned in " + pinDir
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s; no Sluice program is attached to %s\n", did, checked)
			return nil
		},
	}
	cmd.Flags().StringVar(&pinDir, "pin-dir", dataplane.DefaultBPFFS+"/sluice", "bpffs directory holding the dataplane's pins")
	cmd.Flags().StringVar(&cgroup, "cgroup", "", "cgroup2 directory the dataplane was attached to, checked afterwards (default: the one its pinned links name, else the cgroup2 root)")
	return cmd
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "sluice", version())
		},
	}
}

// version is the module version the binary was built from.
func version() string {
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
		return info.Main.Version
	}
	return "(devel)"
}
