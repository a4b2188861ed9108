// Renders a Helm chart's templates with Go's text/template, the engine Helm
// itself uses, and the handful of Sprig/Helm functions the Clew chart
// calls. Helm cannot be installed on the Clew machines (no network beyond
// Debian and PyPI); this lets the tests render and validate the chart.
// A template calling a function not defined here fails to parse, so the
// chart cannot drift outside what is checked.
//
// Usage: chart_render CHART_DIR CONTEXT_JSON > rendered.yaml
// CONTEXT_JSON holds {"Values": ..., "Chart": {...}, "Release": {...}}.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"text/template"
)

func main() {
	if len(os.Args) != 3 {
		fail("usage: chart_render CHART_DIR CONTEXT_JSON")
	}
	dir, ctxPath := os.Args[1], os.Args[2]
	raw, err := os.ReadFile(ctxPath)
	check(err)
	var ctx map[string]interface{}
	check(json.Unmarshal(raw, &ctx))

	root := template.New("chart")
	root.Funcs(funcs(root))
	files, err := filepath.Glob(filepath.Join(dir, "templates", "*"))
	check(err)
	sort.Strings(files)
	var manifests []string
	for _, f := range files {
		text, err := os.ReadFile(f)
		check(err)
		_, err = root.New(filepath.Base(f)).Parse(string(text))
		check(err)
		if strings.HasSuffix(f, ".yaml") {
			manifests = append(manifests, filepath.Base(f))
		}
	}
	var out bytes.Buffer
	for _, name := range manifests {
		var doc bytes.Buffer
		check(root.ExecuteTemplate(&doc, name, ctx))
		// Helm prints unset values as nothing.
		body := strings.ReplaceAll(doc.String(), "<no value>", "")
		if strings.TrimSpace(body) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.TrimRight(body, "\n"))
	}
	os.Stdout.Write(out.Bytes())
}

func funcs(root *template.Template) template.FuncMap {
	return template.FuncMap{
		"include": func(name string, data interface{}) (string, error) {
			var b bytes.Buffer
			err := root.ExecuteTemplate(&b, name, data)
			return b.String(), err
		},
		// JSON is YAML: flow style, the same values.
		"toYaml": func(v interface{}) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"indent": indent,
		"nindent": func(n int, s string) string {
			return "\n" + indent(n, s)
		},
		"quote": func(v interface{}) string {
			b, _ := json.Marshal(fmt.Sprint(v))
			return string(b)
		},
		"default": func(def interface{}, given ...interface{}) interface{} {
			if len(given) == 0 || empty(given[0]) {
				return def
			}
			return given[0]
		},
		"trunc": func(n int, s string) string {
			if len(s) > n {
				return s[:n]
			}
			return s
		},
		"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
		"contains":   func(sub, s string) bool { return strings.Contains(s, sub) },
		"list":       func(v ...interface{}) []interface{} { return v },
		"append":     func(l []interface{}, v interface{}) []interface{} { return append(l, v) },
		"join": func(sep string, l []interface{}) string {
			parts := make([]string, len(l))
			for i, v := range l {
				parts[i] = fmt.Sprint(v)
			}
			return strings.Join(parts, sep)
		},
	}
}

func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
}

// Sprig's notion of empty: nil, zero numbers, false, "", empty collections.
func empty(v interface{}) bool {
	if v == nil {
		return true
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.String, reflect.Slice, reflect.Map, reflect.Array:
		return r.Len() == 0
	case reflect.Bool:
		return !r.Bool()
	case reflect.Float64, reflect.Float32:
		return r.Float() == 0
	case reflect.Int, reflect.Int64, reflect.Int32:
		return r.Int() == 0
	}
	return false
}

func check(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "chart_render:", msg)
	os.Exit(1)
}
