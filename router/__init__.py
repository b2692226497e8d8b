"""The router process: client APIs (fmaas gRPC, TGI/OpenAI HTTP), validation, the serving loop.

Never imports torch.
"""
