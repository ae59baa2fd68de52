// Renders an Ollama TEMPLATE the way Ollama does: Go's text/template with the values and
// functions of ollama's template package (template/template.go: Values, api.Message;
// currentDate, json, toTypeScriptType). Used by tests/test_ollama.py to check that the
// template an artifact ships produces exactly the prompt of the model's own chat template.
// Usage: go run render.go TEMPLATE_FILE < values.json
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type Message struct {
	Role     string `json:"role"`
	Content  string `json:"content"`
	Thinking string `json:"thinking,omitempty"`
}

type Values struct {
	Messages   []Message `json:"messages"`
	Tools      []any     `json:"tools"`
	Prompt     string    `json:"prompt"`
	Suffix     string    `json:"suffix"`
	Think      bool      `json:"think"`
	ThinkLevel string    `json:"think_level"`
	IsThinkSet bool      `json:"is_think_set"`
	System     string    `json:"system"`
	Date       string    `json:"date"`
}

func main() {
	src, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var v Values
	if err := json.NewDecoder(os.Stdin).Decode(&v); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	funcs := template.FuncMap{
		"currentDate":      func() string { return v.Date },
		"json":             func(x any) string { b, _ := json.Marshal(x); return string(b) },
		"toTypeScriptType": func(x any) string { return "any" },
	}
	t, err := template.New("ollama").Option("missingkey=zero").Funcs(funcs).Parse(string(src))
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	if err := t.Execute(os.Stdout, v); err != nil {
		fmt.Fprintln(os.Stderr, "execute:", err)
		os.Exit(1)
	}
}
