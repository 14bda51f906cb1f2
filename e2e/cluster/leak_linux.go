package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/sluice-mesh/sluice/dataplane"
)

// Leftovers lists what remains on this host of the cluster with the given
// id: network namespaces, pin directories, its cgroup, its bridge or veths
// (in this process's network namespace) and its directory. After Close it
// should be empty; each entry names the object so it can be removed by
// hand.
func Leftovers(id string) ([]string, error) {
	var left []string
	glob := func(pattern string) error {
		matches, err := filepath.Glob(pattern)
		if err != nil {
			return err
		}
		left = append(left, matches...)
		return nil
	}
	if err := glob(filepath.Join("/run/netns", "sluice-"+id+"-*")); err != nil {
		return nil, err
	}
	if err := glob(filepath.Join(dataplane.DefaultBPFFS, "sluice-sim-"+id+"-*")); err != nil {
		return nil, err
	}
	mount, err := dataplane.Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	for _, dir := range []string{filepath.Join(mount, "sluice-sim-"+id), filepath.Join(os.TempDir(), "sluice-sim-"+id)} {
		if _, err := os.Stat(dir); err == nil {
			left = append(left, dir)
		}
	}
	links, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	for _, l := range links {
		if l.Name == "slbr"+id || len(id) >= 6 && strings.HasPrefix(l.Name, "slv"+id[:6]) {
			left = append(left, "link "+l.Name)
		}
	}
	return left, nil
}
