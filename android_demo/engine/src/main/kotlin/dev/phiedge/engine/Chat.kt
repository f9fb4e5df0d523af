package dev.phiedge.engine

/**
 * Multi-turn chat over one KV cache (runtime/chat.py): each turn prefills only its own tokens.
 *
 *     Alice: {turn 1}\nBob:{reply 1}\nAlice: {turn 2}\nBob:{reply 2} ...
 *     |<------------------- tokens in the KV cache ------------------>| pending
 *
 * A reply that ended at a stop string is cut on text, not on a token boundary, so the cache keeps the longest
 * run of reply tokens whose text the reply starts with; the rest of the reply text is [pending] and is tokenized
 * with the next turn.
 */
class ContextFullException(message: String) : IllegalArgumentException(message)

data class Turn(val user: String, val reply: String)

class ChatSession(private val model: TextGenerator, val template: String = "chat", val dropOldest: Boolean = false) {
    var turns: List<Turn> = emptyList(); private set
    var tokens: List<Int> = emptyList(); private set  // the ids in the KV cache, in order
    var pending: String = ""; private set  // conversation text not in the cache yet

    init {
        model.manifest.applyTemplate(template, "", "prompt")
        model.manifest.applyTemplate(template, "", "turn")  // throws if the template has no turn part
        reset()
    }

    fun reset(wait: Boolean = true) = model.exclusive(wait) {
        turns = emptyList()
        tokens = emptyList()
        pending = ""
        model.backend.truncate(0)
        model.cacheOwner = this
    }

    private fun part(user: String, first: Boolean) =
        model.manifest.applyTemplate(template, user, if (first) "prompt" else "turn")

    private fun conversation(ts: List<Turn>) = ts.withIndex().joinToString("") { (i, t) -> part(t.user, i == 0) + t.reply }

    /**
     * The ids of the new turn, after dropping the oldest turns if the conversation would not fit (runtime/chat.py).
     * With [dropOldest], the fewest oldest turns are dropped that leave room for the reply as well (maxNewTokens, at
     * most half the context); failing that, the fewest that let the turn fit at all.
     */
    private fun makeRoom(user: String, ids: IntArray, config: GenerationConfig): IntArray {
        val capacity = model.backend.capacity
        if (!dropOldest) {
            if (tokens.size + ids.size <= capacity) return ids
            if (tokens.isEmpty()) throw ContextFullException(
                "the message has ${ids.size} tokens but the context holds $capacity; send a shorter message")
            throw ContextFullException("the conversation has ${tokens.size} tokens and the new turn ${ids.size}, but " +
                "the context holds $capacity; start over (reset) or allow dropping the oldest turns (dropOldest)")
        }
        val reserve = minOf(config.maxNewTokens, capacity / 2)  // room for the reply, so it is not cut at once
        var fallback: Pair<Int, IntArray>? = null
        for (start in 0..turns.size) {
            val kept = turns.subList(start, turns.size)
            val turn = if (start == 0) ids else model.encode(conversation(kept) + part(user, kept.isEmpty()))
            val total = turn.size + (if (start == 0) tokens.size else 0)
            if (total + reserve <= capacity) return keep(start, turn)
            if (fallback == null && total <= capacity) fallback = start to turn
        }
        fallback?.let { return keep(it.first, it.second) }
        throw ContextFullException("the new turn alone has ${ids.size} tokens but the context holds $capacity; " +
            "send a shorter message")
    }

    /** Drops the first [start] turns; the rest of the conversation is prefilled again with [ids]. */
    private fun keep(start: Int, ids: IntArray): IntArray {
        if (start > 0) {
            turns = turns.subList(start, turns.size).toList()
            tokens = emptyList()
            pending = conversation(turns)
            model.backend.truncate(0)
        }
        return ids
    }

    /** The reply to [user]; the template's stop strings end it. A cancelled turn leaves no trace. [wait]: false
     *  throws ModelBusyException instead of waiting while another thread generates on the model. */
    fun send(user: String, config: GenerationConfig = GenerationConfig(), onText: ((String) -> Unit)? = null,
             cancel: CancelToken? = null, clock: Clock = ProcClock, wait: Boolean = true): Generation {
        require(user.isNotEmpty()) { "the message is empty; type something to say" }
        return model.exclusive(wait) { turn(user, config, onText, cancel, clock) }
    }

    private fun turn(user: String, config: GenerationConfig, onText: ((String) -> Unit)?, cancel: CancelToken?,
                     clock: Clock): Generation {
        val backend = model.backend
        // The cache was used for something else: the conversation is fed again with this turn, in the same
        // (chunked, cancellable) prefill, and a cancelled turn leaves it to be rebuilt next time.
        val rebuild = model.cacheOwner !== this
        backend.truncate(if (rebuild) 0 else tokens.size)
        model.cacheOwner = this
        val ids = makeRoom(user, model.encode(pending + part(user, turns.isEmpty())), config)
        val prefix = if (rebuild) tokens.toIntArray() else IntArray(0)  // empty when makeRoom dropped the turns
        val stops = (config.stop + model.manifest.templateStops(template)).distinct()
        val out = generateIds(backend, prefix + ids, model.resolve(config.copy(stop = stops)), model.stopTokenIds, model::decode, onText,
            cancel, model.loadS, clock, context = if (rebuild) IntArray(0) else tokens.toIntArray(),
            suppress = model.suppress)
        if (out.finishReason == FinishReason.CANCELLED) {
            if (rebuild) model.cacheOwner = null
            backend.truncate(if (rebuild) 0 else tokens.size)
            return out
        }
        val fed = out.tokens.dropLast(1)  // the last sampled token never enters the cache (Loop.kt)
        var keep = fed.size
        while (keep > 0 && !out.text.startsWith(model.decode(fed.subList(0, keep).toIntArray()))) keep--
        pending = out.text.cpDrop(model.decode(fed.subList(0, keep).toIntArray()).cpLength())
        tokens = tokens + ids.toList() + fed.subList(0, keep)
        backend.truncate(tokens.size)
        turns = turns + Turn(user, out.text)
        return out
    }
}
