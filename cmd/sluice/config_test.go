package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/xds"
)

// settingsRun parses args with the agent's flags, then applies env and the
// files (by name) as the agent does. It returns the flag values by name.
func settingsRun(t *testing.T, args []string, env map[string]string, files map[string]string) (map[string]string, settingsOrigin, error) {
	t.Helper()
	cmd := newAgentCommand()
	fl := cmd.Flags()
	if err := fl.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	read := func(name string) ([]byte, error) {
		data, ok := files[name]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		return []byte(data), nil
	}
	origin, err := applySettings(fl, lookup, read)
	vals := map[string]string{}
	for _, name := range []string{"xds", "node-name", "node-id", "max-services", "max-backends", "fast-path", "flows",
		"config-poll", "metrics-addr", "log-level", "mesh", "uninstall-on-exit"} {
		vals[name] = fl.Lookup(name).Value.String()
	}
	return vals, origin, err
}

func TestAgentSettingsPrecedence(t *testing.T) {
	file := `# agent settings
xds: cp.example:15010
node-name: from-file
max-services: 4096
max-backends: 0x1000
fast-path: true
flows: false
config-poll: 2s
metrics-addr: ""
log-level: debug
mesh: ~
`
	host, _ := os.Hostname()
	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		want       map[string]string
		fromEnv    []string
		fromFile   []string
		originFile string
	}{{
		name: "file only",
		args: []string{"--config", "agent.yaml"},
		want: map[string]string{"xds": "cp.example:15010", "node-name": "from-file", "max-services": "4096",
			"max-backends": "4096", "fast-path": "true", "flows": "false", "config-poll": "2s", "metrics-addr": "",
			"log-level": "debug", "mesh": "", "node-id": host, "uninstall-on-exit": "false"},
		fromFile:   []string{"config-poll", "fast-path", "flows", "log-level", "max-backends", "max-services", "metrics-addr", "node-name", "xds"},
		originFile: "agent.yaml",
	}, {
		name: "environment over file, command line over both",
		args: []string{"--config", "agent.yaml", "--max-services", "7", "--fast-path=false"},
		env: map[string]string{"SLUICE_NODE_NAME": "from-env", "SLUICE_MAX_SERVICES": "100", "SLUICE_CONFIG_POLL": "250ms",
			"SLUICE_UNINSTALL_ON_EXIT": "true", "SLUICE_TEST_ROLE": "server", "SLUICE_SERVICE_HOST": "10.0.0.1"},
		want: map[string]string{"node-name": "from-env", "max-services": "7", "fast-path": "false", "config-poll": "250ms",
			"uninstall-on-exit": "true", "xds": "cp.example:15010", "log-level": "debug"},
		fromEnv:    []string{"config-poll", "node-name", "uninstall-on-exit"},
		fromFile:   []string{"flows", "log-level", "max-backends", "metrics-addr", "xds"},
		originFile: "agent.yaml",
	}, {
		name:       "SLUICE_CONFIG names the file",
		env:        map[string]string{"SLUICE_CONFIG": "agent.yaml"},
		want:       map[string]string{"node-name": "from-file", "max-services": "4096"},
		fromFile:   []string{"config-poll", "fast-path", "flows", "log-level", "max-backends", "max-services", "metrics-addr", "node-name", "xds"},
		originFile: "agent.yaml",
	}, {
		name:       "--config over SLUICE_CONFIG",
		args:       []string{"--config", "other.yaml"},
		env:        map[string]string{"SLUICE_CONFIG": "agent.yaml"},
		want:       map[string]string{"node-name": "other", "max-services": "16384"},
		fromFile:   []string{"node-name"},
		originFile: "other.yaml",
	}, {
		name:    "environment without a file; an empty value is a value",
		env:     map[string]string{"SLUICE_XDS": "10.0.0.5:15010", "SLUICE_METRICS_ADDR": "", "SLUICE_FLOWS": "0"},
		want:    map[string]string{"xds": "10.0.0.5:15010", "metrics-addr": "", "flows": "false", "node-name": host},
		fromEnv: []string{"flows", "metrics-addr", "xds"},
	}, {
		name: "defaults",
		want: map[string]string{"xds": "", "node-name": host, "max-services": "16384", "metrics-addr": "127.0.0.1:9464",
			"config-poll": "1s", "fast-path": "false"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, origin, err := settingsRun(t, tc.args, tc.env,
				map[string]string{"agent.yaml": file, "other.yaml": "node-name: other\n"})
			if err != nil {
				t.Fatal(err)
			}
			for k, want := range tc.want {
				if got[k] != want {
					t.Errorf("%s = %q, want %q", k, got[k], want)
				}
			}
			if !slices.Equal(origin.fromEnv, tc.fromEnv) || !slices.Equal(origin.fromFile, tc.fromFile) || origin.file != tc.originFile {
				t.Errorf("origin = %+v, want file %q, from env %v, from file %v", origin, tc.originFile, tc.fromEnv, tc.fromFile)
			}
		})
	}
}

func TestAgentSettingsErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		file  string
		wants []string // substrings of the error
	}{
		{"unknown key, with a suggestion", nil, nil, "xds: a:1\nnode-nmae: n1\n",
			[]string{"agent.yaml:2: node-nmae: unknown setting; did you mean node-name?"}},
		{"environment spelling as a key", nil, nil, "SLUICE_NODE_NAME: n1\n",
			[]string{"agent.yaml:1: SLUICE_NODE_NAME: unknown setting; did you mean node-name?"}},
		{"unknown key, nothing close", nil, nil, "colour: blue\n",
			[]string{"agent.yaml:1: colour: unknown setting; keys are the agent's long flag names"}},
		{"help is no setting", nil, nil, "help: true\n", []string{"agent.yaml:1: help: unknown setting"}},
		{"config in the file", nil, nil, "config: other.yaml\n",
			[]string{"agent.yaml:1: config: a settings file cannot name another settings file"}},
		{"list value", nil, nil, "node-name: n1\nxds: [a, b]\n", []string{"agent.yaml:2: xds: must be a single value, not a list"}},
		{"mapping value", nil, nil, "xds:\n  host: a\n", []string{"agent.yaml:2: xds: must be a single value, not a mapping"}},
		{"key twice", nil, nil, "xds: a\nxds: b\n", []string{"agent.yaml:2: xds: given twice"}},
		{"not a mapping", nil, nil, "- xds: a\n", []string{"agent.yaml:1: must be a mapping of flag names to values"}},
		{"syntax", nil, nil, "xds: [\n", []string{"agent.yaml", "invalid YAML"}},
		{"bad int in the file", nil, nil, "max-services: abc\n",
			[]string{`agent.yaml:1: max-services: "abc": invalid int for --max-services: strconv.ParseInt: parsing "abc": invalid syntax`}},
		{"bad bool in the file", nil, nil, "fast-path: yes\n", []string{`agent.yaml:1: fast-path: "yes": invalid bool for --fast-path`}},
		{"bad duration in the file", nil, nil, "config-poll: 5\n",
			[]string{`agent.yaml:1: config-poll: "5": invalid duration for --config-poll: time: missing unit in duration "5"`}},
		{"bad int in the environment", nil, map[string]string{"SLUICE_MAX_SERVICES": "abc"}, "",
			[]string{`SLUICE_MAX_SERVICES="abc": invalid int for --max-services: strconv.ParseInt: parsing "abc": invalid syntax`}},
		{"bad duration in the environment", nil, map[string]string{"SLUICE_WARMING_TIMEOUT": "soon"}, "",
			[]string{`SLUICE_WARMING_TIMEOUT="soon": invalid duration for --warming-timeout`}},
		{"empty int in the environment", nil, map[string]string{"SLUICE_MAX_BACKENDS": ""}, "",
			[]string{`SLUICE_MAX_BACKENDS="": invalid int for --max-backends`}},
		{"file missing, named by the flag", []string{"--config", "gone.yaml"}, nil, "",
			[]string{"--config: open gone.yaml: file does not exist"}},
		{"file missing, named by the environment", nil, map[string]string{"SLUICE_CONFIG": "gone.yaml"}, "",
			[]string{"SLUICE_CONFIG: open gone.yaml: file does not exist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append(args, "--config", "agent.yaml")
			}
			_, _, err := settingsRun(t, args, tc.env, map[string]string{"agent.yaml": tc.file})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.file != "" && !strings.Contains(err.Error(), "--config") && !errors.Is(err, errSettingsFile) {
				t.Errorf("error %v from the file is not of class errSettingsFile", err)
			}
		})
	}
}

// A bad value that something of higher precedence overrides is never
// read, as if it were not there.
func TestAgentSettingsOverriddenNotParsed(t *testing.T) {
	got, _, err := settingsRun(t, []string{"--config", "agent.yaml", "--max-services", "9"}, nil,
		map[string]string{"agent.yaml": "max-services: abc\n"})
	if err != nil || got["max-services"] != "9" {
		t.Errorf("max-services = %q, %v; want 9 and no error", got["max-services"], err)
	}
}

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{"node-name": "SLUICE_NODE_NAME", "xds": "SLUICE_XDS",
		"max-workload-addresses": "SLUICE_MAX_WORKLOAD_ADDRESSES", "config": "SLUICE_CONFIG"} {
		if got := envName(flag); got != want {
			t.Errorf("envName(%q) = %q, want %q", flag, got, want)
		}
	}
}

func TestReadiness(t *testing.T) {
	applied := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	lost := applied.Add(time.Hour)
	for _, tc := range []struct {
		name  string
		st    xds.Status
		ready bool
		why   string
	}{
		{"nothing yet", xds.Status{}, false, "not ready: waiting for the first xDS state from cp:15010"},
		{"connecting fails", xds.Status{LastError: "connection refused"}, false,
			"not ready: waiting for the first xDS state from cp:15010 (not connected: connection refused)"},
		{"first response rejected", xds.Status{Connected: true, LastNACK: &xds.NACK{Error: "listener x: bad port"}}, false,
			"not ready: waiting for the first xDS state from cp:15010 (last response rejected: listener x: bad port)"},
		{"warming", xds.Status{Connected: true, Warming: true, Missing: []string{"cluster a", "cluster b"}}, false,
			"not ready: waiting for the first xDS state from cp:15010 (waiting for cluster a, cluster b)"},
		{"applied, connected", xds.Status{Applied: true, AppliedAt: applied, Connected: true}, true,
			"ready: state applied 2026-03-01T10:00:00Z; control plane connected"},
		{"applied, control plane lost", xds.Status{Applied: true, AppliedAt: applied, ConnectedSince: lost, LastError: "EOF"}, true,
			"ready: last good state in force (applied 2026-03-01T10:00:00Z); control plane unreachable since 2026-03-01T11:00:00Z, reconnecting (EOF)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready, why := readiness(tc.st, "cp:15010")
			if ready != tc.ready || why != tc.why {
				t.Errorf("readiness = %v, %q\nwant %v, %q", ready, why, tc.ready, tc.why)
			}
		})
	}
}

// The directories made for the socket go at exit if empty; those that
// were there stay.
func TestCreatedDirs(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "run", "sluice")
	remove := createdDirs(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	remove()
	if _, err := os.Stat(filepath.Join(base, "run")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("created directories left behind: %v", err)
	}
	if _, err := os.Stat(base); err != nil {
		t.Errorf("directory that was there removed: %v", err)
	}

	remove = createdDirs(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "other"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	remove()
	if _, err := os.Stat(filepath.Join(dir, "other")); err != nil {
		t.Errorf("directory holding another file removed: %v", err)
	}
}
