# mcp__github__search_issues
declare const tools: { mcp__github__search_issues(args: {
  labels?: Array<string>;
  page?: number;
  per_page?: number;
  // GitHub search syntax, e.g. `repo:o/r is:open`
  q: string;
  sort?: "created" | "updated" | "comments";
  state?: "open" | "closed" | "all";
}): Promise<CallToolResult<{ incomplete_results?: boolean; items: Array<{ labels?: Array<{ color?: string; name: string; }>; number: number; state: "open" | "closed"; title: string; }>; total_count: number; }>>; };

# mcp__github__create_issue
declare const tools: { mcp__github__create_issue(args: { assignees?: Array<string>; body?: string; labels?: Array<string>; milestone?: number | null; owner: string; repo: string; title: string; }): Promise<CallToolResult<unknown>>; };

# mcp__github__get-pull-request
declare const tools: { mcp__github__get_pull_request(args: { owner: string; pull_number: number; repo: string; }): Promise<{ base: { ref: string; sha: string; }; head: { ref: string; sha: string; }; mergeable_state?: string | null; merged?: boolean; number: number; }>; };

# read_file
declare const tools: { read_file(args: { encoding?: "utf-8" | "base64"; limit?: number; offset?: number; path: string; }): Promise<{ content: string; size: number; truncated: boolean; }>; };

# write_file
declare const tools: { write_file(args: { content: string; create_dirs?: boolean; mode?: "overwrite" | "append" | "create_new"; path: string; }): Promise<{ bytes_written: number; }>; };

# list_directory
declare const tools: { list_directory(args: { globs?: Array<string>; path: string; recursive?: boolean; }): Promise<Array<{ kind: "file" | "dir" | "symlink"; name: string; size?: number | null; }>>; };

# web_search
declare const tools: { web_search(args: { domains?: Array<string> | string; query: string; recency?: "day" | "week" | number; safe?: boolean; }): Promise<{ results: Array<{ snippet?: string; title: string; url: string; }>; }>; };

# fetch_url
declare const tools: { fetch_url(args: { body?: string | null; headers?: { [key: string]: string; }; method?: "GET" | "POST" | "PUT" | "DELETE"; url: string; }): Promise<{ body: string; ok: true; status: number; } | { error: string; ok: false; }>; };

# get_tree
declare const tools: { get_tree(args?: { depth?: number; root?: string; }): Promise<{ children?: Array<{ children?: Array<unknown>; name: string; }>; name: string; }>; };

# geo_route
declare const tools: { geo_route(args: { profile?: "driving" | "walking" | "cycling"; waypoints: Array<[number, number]>; }): Promise<{ bbox?: [number, number, number, number]; distance_m: number; legs: Array<[string, number, ...Array<string>]>; }>; };

# http_request_headers
declare const tools: { http_request_headers(args: { $id?: string; "2fa_code"?: string; "@context"?: string; "Content-Type": string; "if-none-match"?: string; valid_name: string; "x-api-key"?: string; "état"?: string; }): Promise<unknown>; };

# update_metadata
declare const tools: { update_metadata(args: { anything?: { [key: string]: unknown; }; attributes?: { [key: string]: string | number | boolean; }; extra?: { [key: string]: unknown; }; id: string; labels?: { [key: string]: string; }; owner?: { team?: string; }; }): Promise<{}>; };

# apply_patch
declare const tools: { apply_patch(input: string): Promise<unknown>; };

# run_sql
declare const tools: { run_sql(input: string): Promise<{ columns: Array<string>; rows: Array<unknown[]>; }>; };

# mcp__slack__post_message
declare const tools: { mcp__slack__post_message(args: { blocks?: Array<{ [key: string]: unknown; }>; channel: string; text: string; thread_ts?: string; }): Promise<CallToolResult<{ ok: boolean; ts?: string; }>>; };

# mcp__slack__list_channels
declare const tools: { mcp__slack__list_channels(args?: { [key: string]: unknown; }): Promise<CallToolResult<{ channels?: Array<{ id: string; is_private?: boolean; name: string; }>; next_cursor?: unknown; }>>; };

# calendar.create_event
declare const tools: { calendar_create_event(args: ({ all_day: true; date: string; } | { end: string; start: string; }) & { attendees?: Array<{ email: string; optional?: boolean; }>; title: string; }): Promise<{ html_link?: string; id: string; }>; };

# describe_image
declare const tools: { describe_image(args: {
  // How closely to look.
  detail?: "low" | "high";
  // The image: a data: URL,
  // or an inline base64 block.
  image: string | {
    // Base64 bytes.
    data: string;
    mimeType: string;
  };
  prompt?: string;
}): Promise<{
  // One sentence.
  caption: string;
  objects?: Array<string>;
}>; };

# ping
declare const tools: { ping(args?: {}): Promise<"pong">; };

# search_logs
declare const tools: { search_logs(args?: { filters?: { host?: string; service?: string; } | null; level?: "debug" | "info" | "warn" | "error" | null; limit?: number | null; query?: string; sample?: 1 | "all" | null | true | 0.5; since?: string; }): Promise<{ lines: Array<{ fields?: { [key: string]: unknown; }; level?: string; message: string; ts: string; }>; truncated?: boolean; }>; };

# hidden-dynamic-tool
declare const tools: { hidden_dynamic_tool(args?: { [key: string]: unknown; }): Promise<unknown>; };

# hidden_dynamic_tool
declare const tools: { hidden_dynamic_tool_2(args: { value: string; }): Promise<unknown>; };
