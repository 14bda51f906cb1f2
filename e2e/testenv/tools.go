package testenv

import (
	"errors"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// toolInstall says how to install the tools that tests look for; .ci/run
// installs them this way.
var toolInstall = map[string]string{
	"curl":   "apt-get install curl",
	"wrk":    "apt-get install wrk",
	"fortio": "GOBIN=/usr/local/bin go install fortio.org/fortio@v1.68.2",
	// kube-proxy's rule shapes in the side-by-side benchmark
	"iptables-restore": "apt-get install iptables",
	"nft":              "apt-get install nftables",
	"conntrack":        "apt-get install conntrack",
}

// LookTool returns the path of the program name: from PATH, or else from
// where `go install` puts programs (GOBIN, or the first GOPATH's bin), so a
// Go tool installed without touching PATH is found.
func LookTool(name string) (string, error) {
	if path, err := exec.LookPath(name); err == nil {
		return filepath.Abs(path)
	}
	dirs := goBinDirs()
	for _, dir := range dirs {
		path := filepath.Join(dir, name)
		if info, err := os.Stat(path); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	how := ""
	if cmd, ok := toolInstall[name]; ok {
		how = "; install it with " + cmd
	}
	return "", fmt.Errorf("%s not found in PATH or %s%s", name, strings.Join(dirs, ", "), how)
}

// Tool returns the path of the program name (found as LookTool finds it),
// or skips the test, saying how to install it. Under CI=true, where every
// tool is installed, a missing tool fails the test instead.
func Tool(t testing.TB, name string) string {
	t.Helper()
	path, err := LookTool(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("test needs a tool that is missing under CI=true: %v", err)
	}
	t.Skip("skipping: " + err.Error())
	return ""
}

// goBinDirs returns where `go install` puts programs: GOBIN if set, and
// the bin directory of the first GOPATH entry (used when GOBIN is not). It asks the go command, so
// settings made with `go env -w` count; without one it uses the defaults.
func goBinDirs() []string {
	gobin, gopath := goEnv("GOBIN"), goEnv("GOPATH")
	if gopath == "" {
		gopath = build.Default.GOPATH
	}
	var dirs []string
	if gobin != "" {
		dirs = append(dirs, gobin)
	}
	if first, _, _ := strings.Cut(gopath, string(os.PathListSeparator)); first != "" {
		dirs = append(dirs, filepath.Join(first, "bin"))
	}
	return dirs
}

func goEnv(key string) string {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			return os.Getenv(key) // no go command
		}
		return ""
	}
	return strings.TrimSpace(string(out))
}
