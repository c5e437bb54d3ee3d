/**
 * wspush-client: a WebSocket client for wspush (and go-websocket) that keeps its place.
 *
 * One `WspushClient` holds at most one socket at a time. It reads the welcome frame's clientId
 * (a new one after every reconnect), dispatches pushes by `code`, reconnects with jittered
 * exponential backoff, gives up on the answers that say retrying cannot help (close 1008, code
 * -1001, close 4001), and remembers the last `offset`/`epoch` of every group stream it received
 * pushes of, so the app's backend can re-bind with `since` after a reconnect.
 *
 * No runtime dependency: it uses the `WebSocket` of the platform (browsers; Node 22+) or the
 * constructor passed in the options (Node 20, tests).
 */

/** `{clientId, userId, extend}`: the `data` of the 1001/1002/1003 member events, decoded. */
export interface Member {
  clientId: string;
  userId: string;
  extend: string;
}

/** A pushed message as the server sends it. `offset`/`epoch` only on groups with history. */
export interface Push {
  messageId: string;
  sendUserId: string;
  code: number;
  msg: string;
  data: unknown;
  offset?: number;
  epoch?: string;
}

/**
 * Where the client stands in one group stream: the last `offset` received in `epoch`.
 * `group` is set when the `groupOf` option named the push's group (the server's frames do not
 * carry the group name; an epoch names exactly one stream, the current life of one group).
 */
export interface Position {
  group?: string;
  epoch: string;
  offset: number;
}

export interface ConnectedEvent {
  clientId: string;
  /** False for the first connection of this client object, true after any reconnect. */
  reconnected: boolean;
}

export interface DisconnectedEvent {
  /** The close code (1006 when the connection was lost or abandoned without one). */
  code: number;
  reason: string;
  /** Whether this socket had received its welcome frame. */
  wasConnected: boolean;
  /** Whether a reconnect is scheduled (false when the client stopped). */
  willReconnect: boolean;
}

export interface ReconnectingEvent {
  /** Consecutive failed attempts so far (0: the first retry after a stable connection). */
  attempt: number;
  /** Milliseconds until the next attempt. */
  delay: number;
}

export interface StoppedEvent {
  /** The close code or push code that stopped the client; 0 for `close()` / `stop()`. */
  code: number;
  reason: string;
  /** True when the app stopped it (`close()` or `stop()`), false when the server did. */
  byClient: boolean;
}

/** The subset of the WHATWG `WebSocket` this client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface WspushOptions {
  /** The system to connect to (`/ws?systemId=`). Required. */
  systemId: string;
  /** A fixed connect token (JWT) sent as `token=`; see `getToken` for one per attempt. */
  token?: string;
  /**
   * Called before every connect attempt (the first included) for a fresh JWT. A rejection or
   * throw counts as a failed attempt (an `error` event, then the backoff).
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; default `globalThis.WebSocket`. Node 20 has none: pass one. */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay in ms (before jitter). Default 500. */
  minReconnectDelay?: number;
  /** Upper bound of the reconnect delay in ms. Default 30000. */
  maxReconnectDelay?: number;
  /** A connection open this long (ms) resets the backoff to `minReconnectDelay`. Default 10000. */
  stableAfter?: number;
  /** An attempt that has not brought the welcome frame within this many ms is given up. Default 10000. */
  connectTimeout?: number;
  /**
   * Heartbeat timeout in ms: a connection on which no frame of any kind arrived for this long is
   * taken for dead and replaced. wspush's own heartbeat is WebSocket ping frames, which browsers
   * answer but never show to scripts, so an idle connection looks silent from JS; set this only
   * when the backend pushes something regularly (for example a `send_to_system` every 25 s; then
   * use 2 to 3 times that period). Sockets that emit `ping` events (Node's `ws` package) count
   * those pings as frames. Default 0: off.
   */
  idleTimeout?: number;
  /**
   * Close codes after which the client stops instead of reconnecting. Default `[1008, 4001]`:
   * wspush closes with 1008 for a connect without systemId, a system that now needs a token,
   * and a slow consumer; with 4001 for a connection replaced by a newer
   * one of the same user (singleConnection), where reconnecting would close that one in turn.
   */
  stopCloseCodes?: number[];
  /** Names the group of a push (for `positions()`); the server's frames do not carry it. */
  groupOf?: (push: Push) => string | undefined;
  /** Connect right after construction (on a microtask). Default true; false waits for `connect()`. */
  autoConnect?: boolean;
  /** Source of jitter in [0, 1). Default `Math.random`. */
  random?: () => number;
}

/** The client's state: `stopped` after a stop code, `stop()` or `close()`. */
export type State = "idle" | "connecting" | "open" | "waiting" | "stopped";

type EventMap = {
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  reconnecting: ReconnectingEvent;
  stopped: StoppedEvent;
  error: Error;
  message: Push;
};

type Handler = (...args: any[]) => void;

/** wspush's push codes for member events (the original's 1001/1002 and wspush's 1003). */
export const CODE_ONLINE = 1001;
export const CODE_OFFLINE = 1002;
export const CODE_LEFT = 1003;
/** The original's answer to a connect without systemId, followed by close 1008. */
export const CODE_SYSTEM_ID_ERROR = -1001;
/** Reported as the close code of a connection the client abandoned or lost without a close frame. */
export const CLOSE_ABNORMAL = 1006;

const MEMBER_CODES = new Set([CODE_ONLINE, CODE_OFFLINE, CODE_LEFT]);

/** Decodes a member event's `data`: a JSON string holding the object (or the object itself). */
export function decodeMember(data: unknown): Member | undefined {
  let v: unknown = data;
  if (typeof v === "string") {
    try {
      v = JSON.parse(v);
    } catch {
      return undefined;
    }
  }
  if (v === null || typeof v !== "object") return undefined;
  const o = v as Record<string, unknown>;
  const str = (x: unknown) => (typeof x === "string" ? x : x == null ? "" : String(x));
  if (typeof o.clientId !== "string") return undefined;
  return { clientId: o.clientId, userId: str(o.userId), extend: str(o.extend) };
}

/**
 * The reconnect delay after `attempt` consecutive failures: `min * 2^attempt` capped at `max`,
 * then "equal jitter" (a uniform value in its upper half), so it stays within `[min/2, max]`.
 */
export function backoffDelay(attempt: number, min: number, max: number, random: () => number): number {
  const base = Math.min(max, min * Math.pow(2, Math.min(attempt, 30)));
  return Math.round(base / 2 + random() * (base / 2));
}

export class WspushClient {
  readonly url: string;
  private readonly opts: Required<Omit<WspushOptions, "token" | "getToken" | "WebSocket" | "groupOf">> &
    Pick<WspushOptions, "token" | "getToken" | "groupOf">;
  private readonly Ctor: WebSocketConstructor;
  private handlers = new Map<string, Set<Handler>>();
  private sock: WebSocketLike | null = null;
  private welcomed = false;
  private _clientId: string | null = null;
  private _state: State = "idle";
  private everConnected = false;
  private failures = 0;
  /** Bumped whenever the current attempt is abandoned, so late callbacks of old ones are ignored. */
  private generation = 0;
  private closedForGood = false;
  private streams = new Map<string, Position>();
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private stableTimer: ReturnType<typeof setTimeout> | null = null;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(url: string, options: WspushOptions) {
    if (!options || typeof options.systemId !== "string" || options.systemId === "") {
      throw new TypeError("WspushClient: options.systemId is required");
    }
    const Ctor = options.WebSocket ?? (globalThis as any).WebSocket;
    if (typeof Ctor !== "function") {
      throw new TypeError(
        "WspushClient: no WebSocket on this platform (Node 20 has none): pass options.WebSocket",
      );
    }
    this.Ctor = Ctor;
    this.url = url;
    this.opts = {
      systemId: options.systemId,
      token: options.token,
      getToken: options.getToken,
      groupOf: options.groupOf,
      minReconnectDelay: options.minReconnectDelay ?? 500,
      maxReconnectDelay: options.maxReconnectDelay ?? 30000,
      stableAfter: options.stableAfter ?? 10000,
      connectTimeout: options.connectTimeout ?? 10000,
      idleTimeout: options.idleTimeout ?? 0,
      stopCloseCodes: options.stopCloseCodes ?? [1008, 4001],
      autoConnect: options.autoConnect ?? true,
      random: options.random ?? Math.random,
    };
    if (this.opts.maxReconnectDelay < this.opts.minReconnectDelay) {
      throw new RangeError("WspushClient: maxReconnectDelay must be at least minReconnectDelay");
    }
    // On a microtask, so that handlers attached right after `new` see every event.
    if (this.opts.autoConnect) {
      queueMicrotask(() => {
        if (this._state === "idle" && !this.closedForGood) this.connect();
      });
    }
  }

  /** The clientId of the current connection; null while not connected. */
  get clientId(): string | null {
    return this._clientId;
  }

  get state(): State {
    return this._state;
  }

  /**
   * Subscribes to an event (`connected`, `disconnected`, `reconnecting`, `stopped`, `error`,
   * `message`) or to the pushes of one `code`. A code handler gets `(data, push)`, where `data`
   * is a decoded `Member` for 1001/1002/1003 and the push's `data` otherwise. Returns a function
   * that unsubscribes.
   */
  on<K extends keyof EventMap>(event: K, fn: (ev: EventMap[K]) => void): () => void;
  on(code: typeof CODE_ONLINE | typeof CODE_OFFLINE | typeof CODE_LEFT, fn: (member: Member, push: Push) => void): () => void;
  on(code: number, fn: (data: any, push: Push) => void): () => void;
  on(event: string | number, fn: Handler): () => void {
    const key = String(event);
    let set = this.handlers.get(key);
    if (!set) this.handlers.set(key, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event: string | number, fn: Handler): void {
    this.handlers.get(String(event))?.delete(fn);
  }

  /**
   * The last position received in each group stream, for the backend's `bind_to_group` with
   * `since: {offset, epoch}`. A copy; keeps its value across reconnects.
   */
  positions(): Position[] {
    return Array.from(this.streams.values(), (p) => ({ ...p }));
  }

  /** The position of one group (needs the `groupOf` option). */
  position(group: string): Position | undefined {
    const p = this.streams.get("g:" + group);
    return p && { ...p };
  }

  /** Forgets every remembered position. */
  clearPositions(): void {
    this.streams.clear();
  }

  /**
   * Starts connecting (after `autoConnect: false`, or again after a stop code or `stop()`).
   * Does nothing while connecting or connected; throws after `close()`.
   */
  connect(): void {
    if (this.closedForGood) throw new Error("WspushClient: closed; make a new client");
    if (this._state === "connecting" || this._state === "open") return;
    this.clearTimer("retry");
    this.failures = 0;
    void this.attempt();
  }

  /** Closes the connection and stops reconnecting; `connect()` starts again. */
  stop(): void {
    this.halt(0, "stopped by the client", true);
  }

  /** Closes the connection and stops for good: no reconnect, `connect()` throws. */
  close(): void {
    if (this.closedForGood) return;
    this.closedForGood = true;
    this.halt(0, "closed by the client", true);
  }

  // --- internals ---

  private emit(event: string, ...args: unknown[]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const fn of Array.from(set)) {
      try {
        fn(...args);
      } catch (e) {
        // A failing handler must not break the client; report it where the platform shows
        // uncaught errors.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }

  private clearTimer(which: "retry" | "stable" | "idle" | "connect"): void {
    const key = (which + "Timer") as "retryTimer" | "stableTimer" | "idleTimer" | "connectTimer";
    const t = this[key];
    if (t !== null) {
      clearTimeout(t);
      this[key] = null;
    }
  }

  private socketUrl(token: string | undefined): string {
    const base = typeof location !== "undefined" ? location.href : undefined;
    const u = new URL(this.url, base);
    if (u.protocol === "http:") u.protocol = "ws:";
    else if (u.protocol === "https:") u.protocol = "wss:";
    u.searchParams.set("systemId", this.opts.systemId);
    if (token !== undefined && token !== "") u.searchParams.set("token", token);
    else u.searchParams.delete("token");
    return u.toString();
  }

  private async attempt(): Promise<void> {
    const gen = ++this.generation;
    this._state = "connecting";
    let token = this.opts.token;
    if (this.opts.getToken) {
      try {
        token = await this.opts.getToken();
      } catch (e) {
        if (gen !== this.generation) return;
        this.emit("error", e instanceof Error ? e : new Error("getToken failed: " + String(e)));
        this.lost(CLOSE_ABNORMAL, "getToken failed", false);
        return;
      }
      if (gen !== this.generation) return;
    }
    let sock: WebSocketLike;
    try {
      sock = new this.Ctor(this.socketUrl(token));
    } catch (e) {
      this.emit("error", e instanceof Error ? e : new Error(String(e)));
      this.lost(CLOSE_ABNORMAL, "cannot open the WebSocket", false);
      return;
    }
    this.sock = sock;
    this.welcomed = false;
    const mine = () => gen === this.generation && this.sock === sock;
    sock.onmessage = (ev) => {
      if (mine()) this.onFrame(ev.data);
    };
    sock.onclose = (ev) => {
      if (!mine()) return;
      this.sock = null;
      this.lost(typeof ev.code === "number" ? ev.code : CLOSE_ABNORMAL, ev.reason ?? "", this.welcomed);
    };
    sock.onerror = () => {
      // Always followed by a close event, which does the work; browsers give no detail here.
    };
    // Node's `ws` package surfaces the server's pings; browsers never do.
    const emitter = sock as unknown as { on?: (ev: string, fn: () => void) => void };
    if (typeof emitter.on === "function") {
      emitter.on("ping", () => {
        if (mine()) this.touch();
      });
    }
    this.connectTimer = setTimeout(() => {
      this.connectTimer = null;
      if (mine() && !this.welcomed) {
        this.abandon(`no welcome frame within ${this.opts.connectTimeout} ms`);
      }
    }, this.opts.connectTimeout);
  }

  /** Drops the current socket without waiting for its close handshake, then handles the loss. */
  private abandon(reason: string): void {
    const sock = this.sock;
    const wasConnected = this.welcomed;
    this.detach();
    if (sock) closeQuietly(sock, 4000, reason);
    this.lost(CLOSE_ABNORMAL, reason, wasConnected);
  }

  /** Forgets the current socket: its later events are ignored. */
  private detach(): void {
    this.generation++;
    const sock = this.sock;
    this.sock = null;
    if (sock) {
      sock.onmessage = null;
      sock.onclose = null;
      sock.onopen = null;
      sock.onerror = null;
    }
    this.clearTimer("connect");
    this.clearTimer("idle");
    this.clearTimer("stable");
  }

  private touch(): void {
    if (this.opts.idleTimeout <= 0) return;
    this.clearTimer("idle");
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      this.abandon(`no frame for ${this.opts.idleTimeout} ms (heartbeat timeout)`);
    }, this.opts.idleTimeout);
  }

  private onFrame(raw: unknown): void {
    this.touch();
    if (typeof raw !== "string") return; // wspush sends text frames only
    let v: any;
    try {
      v = JSON.parse(raw);
    } catch {
      this.emit("error", new Error("wspush-client: a frame that is not JSON: " + raw.slice(0, 200)));
      return;
    }
    if (v === null || typeof v !== "object") return;
    if (!this.welcomed) {
      if (v.code === CODE_SYSTEM_ID_ERROR) {
        this.halt(CODE_SYSTEM_ID_ERROR, typeof v.msg === "string" ? v.msg : "systemId is required", false);
        return;
      }
      if (v.code === 0 && !("messageId" in v) && v.data && typeof v.data.clientId === "string") {
        this.onWelcome(v.data.clientId);
        return;
      }
    }
    if (typeof v.code !== "number") return;
    const push = v as Push;
    if (push.code === CODE_SYSTEM_ID_ERROR) {
      this.halt(CODE_SYSTEM_ID_ERROR, typeof push.msg === "string" ? push.msg : "", false);
      return;
    }
    this.remember(push);
    this.emit("message", push);
    if (MEMBER_CODES.has(push.code)) {
      const m = decodeMember(push.data);
      if (m) this.emit(String(push.code), m, push);
      else this.emit("error", new Error(`wspush-client: a ${push.code} push whose data is not a member`));
    } else {
      this.emit(String(push.code), push.data, push);
    }
  }

  private onWelcome(clientId: string): void {
    this.welcomed = true;
    this.clearTimer("connect");
    this._clientId = clientId;
    this._state = "open";
    const reconnected = this.everConnected;
    this.everConnected = true;
    this.stableTimer = setTimeout(() => {
      this.stableTimer = null;
      this.failures = 0;
    }, this.opts.stableAfter);
    this.emit("connected", { clientId, reconnected });
  }

  private remember(push: Push): void {
    if (typeof push.offset !== "number" || typeof push.epoch !== "string") return;
    let group: string | undefined;
    if (this.opts.groupOf) {
      try {
        group = this.opts.groupOf(push);
      } catch (e) {
        this.emit("error", e instanceof Error ? e : new Error(String(e)));
      }
    }
    const key = group !== undefined ? "g:" + group : "e:" + push.epoch;
    const old = this.streams.get(key);
    if (old && old.epoch === push.epoch && old.offset >= push.offset) return;
    const pos: Position = { epoch: push.epoch, offset: push.offset };
    if (group !== undefined) {
      pos.group = group;
      // The group's epoch-only entry, if an earlier push could not be named, is the same stream.
      this.streams.delete("e:" + push.epoch);
    }
    this.streams.set(key, pos);
  }

  /** The current socket is gone (closed, failed, or abandoned): stop or schedule a retry. */
  private lost(code: number, reason: string, wasConnected: boolean): void {
    this.detach();
    this._clientId = null;
    if (this.opts.stopCloseCodes.includes(code)) {
      this.emit("disconnected", { code, reason, wasConnected, willReconnect: false });
      this.finish(code, reason, false);
      return;
    }
    const delay = backoffDelay(
      this.failures,
      this.opts.minReconnectDelay,
      this.opts.maxReconnectDelay,
      this.opts.random,
    );
    const attempt = this.failures;
    this.failures++;
    this._state = "waiting";
    this.emit("disconnected", { code, reason, wasConnected, willReconnect: true });
    if (this._state !== "waiting") return; // a handler called stop(), close() or connect()
    this.emit("reconnecting", { attempt, delay });
    if (this._state !== "waiting") return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.attempt();
    }, delay);
  }

  /** Stops: closes the socket if any and reports `stopped` (once per stop). */
  private halt(code: number, reason: string, byClient: boolean): void {
    if (this._state === "stopped") return;
    const sock = this.sock;
    const wasConnected = this.welcomed;
    this.detach();
    this.clearTimer("retry");
    this._clientId = null;
    if (sock) {
      closeQuietly(sock, 1000, byClient ? "" : reason.slice(0, 100));
      this.emit("disconnected", { code, reason, wasConnected, willReconnect: false });
    }
    this.finish(code, reason, byClient);
  }

  private finish(code: number, reason: string, byClient: boolean): void {
    this._state = "stopped";
    this.emit("stopped", { code, reason, byClient });
  }
}

function closeQuietly(sock: WebSocketLike, code: number, reason: string): void {
  try {
    // Browsers allow 1000 and 3000-4999 from scripts; the reason at most 123 bytes.
    sock.close(code, reason.slice(0, 60));
  } catch {
    try {
      sock.close();
    } catch {
      // already closed
    }
  }
}
