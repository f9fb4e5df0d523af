package dev.phiedge.engine

/**
 * The one generation loop (runtime/loop.py): prefill, then sample -> show text -> check stops -> decode step.
 *
 *     prompt ids --prefill (chunks)--> logits --sample--> token --TextStream--> onText(piece)
 *                                        ^                  |
 *                                        +--- step([token]) + (unless a stop, EOS, maxNewTokens, full
 *                                                              cache or cancellation ends the call)
 *
 * With a drafter (draft = "ngram", Speculate.kt) a decode step may verify drafted tokens: stepAll([token, d1 .. dK])
 * gives K + 1 rows, queued as (row, draft) pairs; each gives the next token through Sampler.verify, and the first
 * rejected draft empties the queue and truncates the cache after the last kept position. The tokens are exactly
 * those of plain decoding (greedy) or follow the same distribution (sampling).
 *
 * The last sampled token is never fed back, so after a call the cache holds the prompt and all new tokens but
 * the last: backend.length == start + prompt.size + tokens.size - 1 (chat relies on it).
 */
data class GenerationConfig(
    val maxNewTokens: Int = 256,
    val sampling: SamplingConfig = SamplingConfig(),
    val stop: List<String> = emptyList(),  // matched on the decoded text and never shown
    val stopAtEos: Boolean = true,  // false: keep going past the end-of-text token (benchmarks)
    val prefillChunk: Int = 0,  // prefill at most this many tokens per step; 0: the whole prompt at once
    val draft: String = "none",  // "ngram": speculative decoding by prompt lookup; the same tokens
    val draftTokens: Int = 8,  // the most tokens one step verifies (K); fewer when fewer pay (Speculate.kt)
    val draftCost: Double? = null,  // c of the verify cost line cost(S) = cost(1) (1 + c (S - 1)); null: measured
) {
    init {
        require(draft in NgramDrafter.DRAFTS) { "draft '$draft' is unknown; choose one of ${NgramDrafter.DRAFTS}" }
        require(draftTokens >= 1) { "draft tokens must be >= 1, got $draftTokens" }
        require(draftCost == null || (draftCost >= 0 && draftCost.isFinite())) {
            "draft cost must be a number >= 0 (the verify cost per drafted token, as a fraction of a step) or null " +
                "to measure it, got $draftCost" }
        require(maxNewTokens >= 1) { "max new tokens must be >= 1, got $maxNewTokens" }
        require(prefillChunk >= 0) { "prefill chunk must be >= 0 (0: whole prompt), got $prefillChunk" }
    }
}

class Generation(
    val text: String,  // what was shown: stop strings and anything after them left out
    val tokens: List<Int>,  // every sampled token, the EOS that ended the call included
    val finishReason: FinishReason,
    val stats: GenerationStats,
)

fun checkFits(backend: Backend, nPrompt: Int) {
    val free = backend.capacity - backend.length
    if (nPrompt > free) {
        val used = if (backend.length > 0) " (${backend.length} already in use)" else ""
        throw IllegalArgumentException("the prompt has $nPrompt tokens but the context holds ${backend.capacity}$used; " +
            "shorten the prompt or load the package with a larger context")
    }
}

/**
 * Feeds the prompt in chunks of [chunk] tokens (0: all at once); the logits after it, null if cancelled. Stop
 * takes effect within one chunk: the token is checked between chunks and Backend.interrupt ends the one running.
 */
fun prefill(backend: Backend, ids: IntArray, chunk: Int = 0, cancel: CancelToken? = null): FloatArray? {
    require(ids.isNotEmpty()) { "the prompt has no tokens; pass some text" }
    checkFits(backend, ids.size)
    val step = if (chunk == 0) ids.size else chunk
    var logits: FloatArray? = null
    for (start in ids.indices step step) {
        if (cancel?.isSet() == true) return null
        logits = try {
            backend.step(ids.copyOfRange(start, minOf(start + step, ids.size)))
        } catch (e: StepInterrupted) {
            return null
        }
    }
    return logits
}

/** How many tokens may be drafted after the next one: tokens still wanted, free cache, and no further than a verify
 *  step can be taken back in place (a rope switch, a sliding window's next eviction: Recompute.kt). */
private fun draftLimit(backend: Backend, remaining: Int): Int {
    var limit = minOf(remaining - 1, backend.capacity - backend.length - 1)
    backend.rollbackLimit?.let { limit = minOf(limit, it - backend.length - 1) }
    return limit
}

/** Continues the backend's cache with [prompt]; [decode] (ids -> text) enables text and stop strings. [context]:
 *  ids already in the cache (a chat's earlier turns), which the drafter looks up. [suppress] (vocab) marks ids never
 *  to sample (embedding rows the tokenizer has no token for). */
fun generateIds(
    backend: Backend, prompt: IntArray, config: GenerationConfig = GenerationConfig(),
    stopTokenIds: Collection<Int> = emptyList(),  // any of them ends the call (<|end|>, <|endoftext|>, ...)
    decode: Decode? = null, onText: ((String) -> Unit)? = null, cancel: CancelToken? = null, loadS: Double? = null,
    clock: Clock = ProcClock, context: IntArray = IntArray(0), suppress: BooleanArray? = null,
): Generation {
    val t0 = clock.wallNanos()
    val c0 = clock.cpuNanos()
    val sampler = Sampler(config.sampling, suppress)
    sampler.observe(context)  // the repetition penalty sees the whole conversation, as in runtime/loop.py
    val stops = stopTokenIds.toHashSet()
    val stream = decode?.let { TextStream(it, config.stop, context = prompt) }
    require(config.stop.isEmpty() || stream != null) { "stop strings need text: pass decode (the tokenizer's decode)" }
    val drafter = if (config.draft == "ngram") {
        require(backend.canStepAll) { "this package returns logits for one position per step, so drafted tokens " +
            "cannot be verified; re-export it with this version of the project or use draft = \"none\"" }
        NgramDrafter(config.draftTokens, context + prompt, config.draftCost ?: NgramDrafter.DEFAULT_COST)
    } else null
    sampler.observe(prompt)
    val logits = prefill(backend, prompt, config.prefillChunk, cancel)
    val tPrefill = clock.wallNanos()
    var t1 = -1L
    var c1 = -1L
    val tokens = ArrayList<Int>()
    val queue = ArrayDeque<Pair<FloatArray, Int>>()  // (logits row, the token drafted there or -1)
    if (logits != null) queue.addLast(logits to -1)
    var steps = 0
    var drafted = 0
    var accepted = 0
    var verifying = 0  // drafts in the current verify step
    var kept = 0  // of them, kept so far
    var finish: FinishReason? = null
    while (queue.isNotEmpty()) {
        val (row, draft) = queue.removeFirst()
        val keep = backend.length - queue.size  // the cache holds everything before this row's token
        val token: Int
        if (draft < 0) {
            token = sampler.sample(row)
            if (verifying > 0) { drafter!!.feedback(verifying, verifying); verifying = 0 }
        } else {
            token = sampler.verify(row, draft)
            if (token == draft) { accepted++; kept++ } else {  // later drafts follow a token that was not kept
                drafter!!.feedback(verifying, kept)
                verifying = 0
                queue.clear()
                backend.truncate(keep)
            }
        }
        sampler.observe(intArrayOf(token))
        tokens.add(token)
        drafter?.extend(intArrayOf(token))
        if (t1 < 0) { t1 = clock.wallNanos(); c1 = clock.cpuNanos() }
        finish = when {
            config.stopAtEos && token in stops -> FinishReason.EOS
            stream != null && show(stream, token, onText) -> FinishReason.STOP
            tokens.size >= config.maxNewTokens -> FinishReason.LENGTH
            queue.isEmpty() && backend.length >= backend.capacity -> FinishReason.CONTEXT
            cancel?.isSet() == true -> FinishReason.CANCELLED
            else -> null
        }
        if (finish != null) {
            if (queue.isNotEmpty()) { queue.clear(); backend.truncate(keep) }  // forget positions after this token
            break
        }
        if (queue.isNotEmpty()) continue  // the next row is already computed
        steps++
        val proposal = drafter?.propose(draftLimit(backend, config.maxNewTokens - tokens.size)) ?: IntArray(0)
        try {
            if (proposal.isNotEmpty()) {
                val rows = backend.stepAll(intArrayOf(token) + proposal)  // K + 1 rows
                drafted += proposal.size
                verifying = proposal.size
                kept = 0
                for (i in proposal.indices) queue.addLast(rows[i] to proposal[i])
                queue.addLast(rows[proposal.size] to -1)
            } else {
                queue.addLast(backend.step(intArrayOf(token)) to -1)
            }
        } catch (e: StepInterrupted) {
            finish = FinishReason.CANCELLED
            break
        }
    }
    if (stream != null) {
        val piece = stream.flush()
        if (piece.isNotEmpty()) onText?.invoke(piece)
    }
    val t2 = clock.wallNanos()
    val c2 = clock.cpuNanos()
    val firstT = if (t1 >= 0) t1 else t2
    val firstC = if (t1 >= 0) c1 else c2
    val s = 1e-9
    val reason = finish ?: FinishReason.CANCELLED
    val stats = GenerationStats(promptTokens = prompt.size, newTokens = tokens.size,
        ttftS = if (t1 >= 0) (t1 - t0) * s else null, prefillS = (tPrefill - t0) * s, decodeS = (t2 - firstT) * s,
        cpuS = (c2 - c0) * s, decodeCpuS = (c2 - firstC) * s, peakRssBytes = clock.peakRssBytes(),
        finishReason = reason, loadS = loadS, decodeSteps = steps, draftTokens = drafted, acceptedTokens = accepted)
    return Generation(stream?.text ?: "", tokens, reason, stats)
}

/** Pushes a token's text out; true when a stop string was reached. */
private fun show(stream: TextStream, token: Int, onText: ((String) -> Unit)?): Boolean {
    val piece = stream.push(token)
    if (piece.isNotEmpty()) onText?.invoke(piece)
    return stream.stopped
}
