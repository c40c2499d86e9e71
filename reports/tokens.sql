-- Tokenized pieces and tokens per scheme and tokenizer, with
-- the tokenize-stage rejects beside them.
WITH t AS (
    SELECT scheme, tokenizer_hash,
           count(DISTINCT piece_id) AS pieces,
           count(*) AS rows,
           sum(n_tokens) AS tokens
    FROM tokens
    GROUP BY ALL
),
r AS (
    SELECT scheme, tokenizer_hash,
           count(DISTINCT piece_id) AS rejected
    FROM rejects
    WHERE stage = 'tokenize'
    GROUP BY ALL
)
SELECT
    scheme,
    tokenizer_hash,
    coalesce(t.pieces, 0) AS pieces,
    coalesce(r.rejected, 0) AS rejected,
    coalesce(t.rows, 0) AS rows,
    coalesce(t.tokens, 0) AS tokens,
    k.vocab_size
FROM t
FULL JOIN r USING (scheme, tokenizer_hash)
LEFT JOIN tokenizers k USING (scheme, tokenizer_hash)
ORDER BY tokens DESC, scheme
