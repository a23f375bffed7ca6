# mcp__github__search_issues
declare const tools: { mcp__github__search_issues(args: {
  // GitHub search syntax, e.g. `repo:o/r is:open`
  q: string;
  state?: "open" | "closed" | "all";
  labels?: Array<string>;
  sort?: "created" | "updated" | "comments";
  // integer; min: 1; max: 100
  per_page?: number;
  // integer
  page?: number;
}): Promise<CallToolResult<{
  // integer
  total_count: number;
  incomplete_results?: boolean;
  items: Array<{
    // integer
    number: number;
    title: string;
    state: "open" | "closed";
    labels?: Array<{ name: string; color?: string; }>;
  }>;
}>>; };

# mcp__github__create_issue
declare const tools: { mcp__github__create_issue(args: {
  owner: string;
  repo: string;
  title: string;
  body?: string;
  assignees?: Array<string>;
  labels?: Array<string>;
  // integer
  milestone?: number | null;
}): Promise<CallToolResult<unknown>>; };

# mcp__github__get-pull-request
declare const tools: { mcp__github__get_pull_request(args: {
  owner: string;
  repo: string;
  // integer
  pull_number: number;
}): Promise<{
  // integer
  number: number;
  merged?: boolean;
  head: { ref: string; sha: string; };
  base: { ref: string; sha: string; };
  mergeable_state?: string | null;
}>; };

# read_file
declare const tools: { read_file(args: {
  path: string;
  // default: "utf-8"
  encoding?: "utf-8" | "base64";
  // integer
  offset?: number;
  // integer
  limit?: number;
}): Promise<{
  content: string;
  // integer
  size: number;
  truncated: boolean;
}>; };

# write_file
declare const tools: { write_file(args: { path: string; content: string; mode?: "overwrite" | "append" | "create_new"; create_dirs?: boolean; }): Promise<{
  // integer
  bytes_written: number;
}>; };

# list_directory
declare const tools: { list_directory(args: { path: string; recursive?: boolean; globs?: Array<string>; }): Promise<Array<{
  name: string;
  kind: "file" | "dir" | "symlink";
  // integer
  size?: number | null;
}>>; };

# web_search
declare const tools: { web_search(args: {
  query: string;
  recency?: "day" | "week" | number;
  domains?: Array<string> | string;
  // default: true
  safe?: boolean;
}): Promise<{
  results: Array<{
    title: string;
    // format: uri
    url: string;
    snippet?: string;
  }>;
}>; };

# fetch_url
declare const tools: { fetch_url(args: { url: string; method?: "GET" | "POST" | "PUT" | "DELETE"; headers?: { [key: string]: string; }; body?: string | null; }): Promise<{
  ok: true;
  // integer
  status: number;
  body: string;
} | { ok: false; error: string; }>; };

# get_tree
declare const tools: { get_tree(args?: {
  root?: string;
  // integer
  depth?: number;
}): Promise<{ name: string; children?: Array<{ name: string; children?: Array<unknown>; }>; }>; };

# geo_route
declare const tools: { geo_route(args: { waypoints: Array<[number, number]>; profile?: "driving" | "walking" | "cycling"; }): Promise<{ distance_m: number; bbox?: [number, number, number, number]; legs: Array<[string, number, ...Array<string>]>; }>; };

# http_request_headers
declare const tools: { http_request_headers(args: { "Content-Type": string; "x-api-key"?: string; "if-none-match"?: string; "@context"?: string; "2fa_code"?: string; $id?: string; valid_name: string; "état"?: string; }): Promise<unknown>; };

# update_metadata
declare const tools: { update_metadata(args: { id: string; labels?: { [key: string]: string; }; attributes?: { [key: string]: string | number | boolean; }; extra?: { [key: string]: unknown; }; owner?: { team?: string; }; anything?: { [key: string]: unknown; }; }): Promise<{}>; };

# apply_patch
declare const tools: { apply_patch(input: string): Promise<unknown>; };

# run_sql
declare const tools: { run_sql(input: string): Promise<{ columns: Array<string>; rows: Array<unknown[]>; }>; };

# mcp__slack__post_message
declare const tools: { mcp__slack__post_message(args: { channel: string; text: string; thread_ts?: string; blocks?: Array<{ [key: string]: unknown; }>; }): Promise<CallToolResult<{ ok: boolean; ts?: string; }>>; };

# mcp__slack__list_channels
declare const tools: { mcp__slack__list_channels(args?: { [key: string]: unknown; }): Promise<CallToolResult<{ channels?: Array<{ id: string; name: string; is_private?: boolean; }>; next_cursor?: unknown; }>>; };

# calendar.create_event
declare const tools: { calendar_create_event(args: ({ all_day: true; date: string; } | { start: string; end: string; }) & { title: string; attendees?: Array<{ email: string; optional?: boolean; }>; }): Promise<{ id: string; html_link?: string; }>; };

# describe_image
declare const tools: { describe_image(args: {
  // The image: a data: URL,
  // or an inline base64 block.
  image: string | {
    // Base64 bytes.
    data: string;
    mimeType: string;
  };
  // How closely to look.
  detail?: "low" | "high";
  prompt?: string;
}): Promise<{
  // One sentence.
  caption: string;
  objects?: Array<string>;
}>; };

# ping
declare const tools: { ping(args?: {}): Promise<"pong">; };

# search_logs
declare const tools: { search_logs(args?: {
  query?: string;
  level?: "debug" | "info" | "warn" | "error" | null;
  // integer
  limit?: number | null;
  // format: date-time
  since?: string;
  filters?: { service?: string; host?: string; } | null;
  sample?: 1 | "all" | null | true | 0.5;
}): Promise<{ lines: Array<{ ts: string; level?: string; message: string; fields?: { [key: string]: unknown; }; }>; truncated?: boolean; }>; };

# hidden-dynamic-tool
declare const tools: { hidden_dynamic_tool(args?: { [key: string]: unknown; }): Promise<unknown>; };

# hidden_dynamic_tool
declare const tools: { hidden_dynamic_tool_2(args: { value: string; }): Promise<unknown>; };
