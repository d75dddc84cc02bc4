// Command gen writes kdrop's alerts and dashboard (package monitoring) into
// deploy/, or with -check fails unless the committed files are what it
// would write. Run from the repository's root: make monitoring,
// make check-monitoring.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kdrop/kdrop/deploy/monitoring"
)

func main() {
	check := flag.Bool("check", false, "write nothing; fail unless every generated file is up to date")
	root := flag.String("root", ".", "the repository's root")
	flag.Parse()
	stale, err := run(*root, *check)
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitoring:", err)
		os.Exit(1)
	}
	if *check && len(stale) > 0 {
		fmt.Fprintf(os.Stderr, "check-monitoring: %s differ from what deploy/monitoring generates: run make monitoring and commit the result.\n", strings.Join(stale, ", "))
		os.Exit(1)
	}
	if *check {
		fmt.Println("check-monitoring: the alerts, PrometheusRule, dashboard and their ConfigMaps are up to date")
	}
}

// run writes (or with check, compares) every generated file and returns
// those that were not up to date.
func run(root string, check bool) ([]string, error) {
	chart, err := os.ReadFile(filepath.Join(root, monitoring.ChartFile))
	if err != nil {
		return nil, err
	}
	version, err := monitoring.ChartVersion(chart)
	if err != nil {
		return nil, err
	}
	files, err := monitoring.Files(version)
	if err != nil {
		return nil, err
	}
	var stale []string
	for _, p := range slices.Sorted(maps.Keys(files)) {
		path := filepath.Join(root, p)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, files[p]) {
			continue
		}
		stale = append(stale, p)
		if check {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, files[p], 0o644); err != nil {
			return nil, err
		}
	}
	return stale, nil
}
