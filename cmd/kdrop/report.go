package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kdrop/kdrop/cmd/kdrop/sinks/report"
)

func reportCmd() *cobra.Command {
	var html, md string
	cmd := &cobra.Command{
		Use:   "report FILE",
		Short: "Turn a recording into an HTML page and a Markdown summary, with hints on what to fix",
		Long: `Report reads a recording (kdrop record) and writes a self-contained HTML page
and a Markdown summary, with findings that say what to fix.

Any file is read: a line that cannot be read (or is longer than 16 MiB)
is left out and named in a note; a file cut off mid-way is read up to its
last whole line; names that are not valid Kubernetes names are shown quoted
and marked. The file is read streaming, to its end, in bounded memory:
20,000 flows are kept in detail and the rest folded by kind, and at most 30
findings are shown, the most severe and largest first.`,
		Example: `  kdrop report incident.jsonl.gz                       # Markdown summary on stdout
  kdrop report incident.jsonl.gz --html incident.html --markdown incident.md`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			rec, err := report.Read(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if html == "" && md == "" {
				md = "-"
			}
			if err := writeTo(html, func(o *os.File) error { return report.WriteHTML(o, rec) }); err != nil {
				return fmt.Errorf("--html: %w", err)
			}
			if err := writeTo(md, func(o *os.File) error { return report.WriteMarkdown(o, rec) }); err != nil {
				return fmt.Errorf("--markdown: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&html, "html", "", "write a self-contained HTML page here (- for stdout)")
	cmd.Flags().StringVar(&md, "markdown", "", "write a Markdown summary here (- for stdout; the default when neither is given)")
	return cmd
}

// writeTo runs fn on path ("-": stdout; "": nothing to do).
func writeTo(path string, fn func(*os.File) error) error {
	if path == "" {
		return nil
	}
	if path == "-" {
		return fn(os.Stdout)
	}
	o, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(o); err != nil {
		o.Close()
		return err
	}
	return o.Close()
}
